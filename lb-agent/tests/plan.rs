//! Table-driven tests of `plan`: one fixture directory per kube-proxy rule.
//!
//! Each case is a directory under `tests/fixtures/plan/` holding `manifests/` (as `kubectl get -o
//! yaml` prints them), `expected.json` (the plan, in `lb-agent plan`'s output shape), optionally
//! `warnings.txt` (one line per expected diagnostic: a substring of its text) and `node.txt` (the
//! node to plan for; "node-a" otherwise). The manifests go through the real loader, so each case
//! also checks `source::load_dir`. The invalid-objects case also holds `stderr.txt`, the exact
//! stderr of `lb-agent plan`, checked by `tests/plan_cli.rs`.

use std::path::{Path, PathBuf};

use lb_agent::cli_plan::plan_dir;
use lb_agent::plan::Plan;
use pretty_assertions::assert_eq;

fn fixture_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plan")
        .join(case)
}

/// Plans the case's manifests and compares plan and diagnostics with the expected ones.
fn check_case(case: &str) {
    let dir = fixture_dir(case);
    let node = std::fs::read_to_string(dir.join("node.txt"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "node-a".to_owned());
    let expected_text = std::fs::read_to_string(dir.join("expected.json"))
        .unwrap_or_else(|e| panic!("{case}: expected.json: {e}"));
    let mut expected: Plan = serde_json::from_str(&expected_text)
        .unwrap_or_else(|e| panic!("{case}: expected.json: {e}"));
    expected.normalize();

    let (actual, diagnostics) =
        plan_dir(&dir.join("manifests"), &node).unwrap_or_else(|e| panic!("{case}: {e:#}"));

    // The printed JSON must already be in canonical order and have the contract's shape.
    let mut renormalized = actual.clone();
    renormalized.normalize();
    assert_eq!(
        actual, renormalized,
        "{case}: plan is not in canonical order"
    );
    let actual_json = serde_json::to_value(&actual).expect("plan serializes");
    let expected_json = serde_json::to_value(&expected).expect("plan serializes");
    assert_eq!(actual_json, expected_json, "{case}: plan differs");

    let expected_warnings: Vec<String> = std::fs::read_to_string(dir.join("warnings.txt"))
        .map(|s| {
            s.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let printed: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(
        printed.len(),
        expected_warnings.len(),
        "{case}: diagnostics {printed:#?}"
    );
    for wanted in &expected_warnings {
        assert!(
            printed.iter().any(|p| p.contains(wanted.as_str())),
            "{case}: no diagnostic contains {wanted:?} in {printed:#?}"
        );
    }
}

/// One `#[test]` per fixture directory, keeping each case's doc comment.
macro_rules! plan_cases {
    ($($(#[$doc:meta])* $name:ident => $dir:literal;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $name() {
                check_case($dir);
            }
        )*

        /// Test that every fixture directory is listed in this table (no orphaned cases).
        #[test]
        fn every_fixture_directory_is_a_case() {
            let listed = [$($dir),*];
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plan");
            for entry in std::fs::read_dir(&root).expect("fixtures directory") {
                let name = entry.expect("fixture entry").file_name().to_string_lossy().into_owned();
                assert!(listed.contains(&name.as_str()), "fixture {name} has no test case");
            }
        }
    };
}

plan_cases! {
    // --- Which Services the proxy ignores ------------------------------------------------------

    /// Test that a headless Service (clusterIP None) gets no frontends while others are planned
    /// (upstream: util/utils.go ShouldSkipService, !IsServiceIPSet).
    headless_service_is_ignored => "headless-service-is-ignored";

    /// Test that a Service whose clusterIP is "" gets no frontends
    /// (upstream: util/utils.go ShouldSkipService, IsServiceIPSet).
    service_with_empty_cluster_ip_is_ignored => "service-with-empty-cluster-ip-is-ignored";

    /// Test that ExternalName Services get no frontends, even one that has a clusterIP
    /// (upstream: util/utils.go ShouldSkipService, Type == ExternalName).
    external_name_service_is_ignored_even_with_a_cluster_ip =>
        "external-name-service-is-ignored-even-with-a-cluster-ip";

    /// Test that a Service labelled service.kubernetes.io/service-proxy-name belongs to another
    /// proxy (upstream: cmd/kube-proxy/app/server.go informer label selector, noProxyName).
    service_with_service_proxy_name_label_is_ignored =>
        "service-with-service-proxy-name-label-is-ignored";

    /// Test that a Service labelled service.kubernetes.io/headless is filtered out
    /// (upstream: cmd/kube-proxy/app/server.go informer label selector, noHeadlessEndpoints).
    service_with_headless_label_is_ignored => "service-with-headless-label-is-ignored";

    /// Test that an EndpointSlice with the service-proxy-name label contributes no endpoints
    /// (upstream: cmd/kube-proxy/app/server.go, the same selector on the EndpointSlice informer).
    endpoint_slice_with_service_proxy_name_label_is_ignored =>
        "endpoint-slice-with-service-proxy-name-label-is-ignored";

    /// Test that an EndpointSlice without the kubernetes.io/service-name label belongs to no
    /// Service (upstream: endpointslicecache.go endpointSliceCacheKeys).
    endpoint_slice_without_service_name_label_is_ignored =>
        "endpoint-slice-without-service-name-label-is-ignored";

    /// Test that an FQDN EndpointSlice feeds neither family's proxier, leaving a reject
    /// (upstream: proxy runner / metaproxier OnEndpointSliceAdd, switch on AddressType).
    fqdn_endpoint_slice_is_ignored => "fqdn-endpoint-slice-is-ignored";

    // --- Frontends -----------------------------------------------------------------------------

    /// Test that each ServicePort gets a ClusterIP frontend with the ready endpoints of the slice
    /// port of the same name (upstream: servicechangetracker.go serviceToServiceMap,
    /// endpointslicecache.go endpointInfoByServicePort).
    cluster_ip_service_gets_ready_endpoints_for_each_port =>
        "cluster-ip-service-gets-ready-endpoints-for-each-port";

    /// Test that an unnamed ServicePort matches the slice port named "" and prints port_name ""
    /// (upstream: endpointslicecache.go, ServicePortName{Port: *port.Name}).
    unnamed_port_matches_the_slice_port_named_empty =>
        "unnamed-port-matches-the-slice-port-named-empty";

    /// Test that a slice port without name or protocol is the unnamed TCP port, as the API
    /// server defaults it (upstream: apis/discovery/v1/defaults.go SetDefaults_EndpointPort;
    /// kube-proxy's nil-name check in endpointslicecache.go cannot see such a port).
    slice_port_without_name_or_protocol_gets_the_api_defaults =>
        "slice-port-without-name-or-protocol-gets-the-api-defaults";

    /// Test that a dual-stack Service gets ClusterIP and NodePort frontends per family, each with
    /// endpoints of its own family and IPv6 backends printed as [addr]:port (upstream:
    /// util/utils.go GetClusterIPByFamily; one proxier per family; node IPs per family).
    dual_stack_service_gets_frontends_per_family_with_backends_of_that_family =>
        "dual-stack-service-gets-frontends-per-family-with-backends-of-that-family";

    /// Test that an IPv4-only Service does not use IPv6 EndpointSlices
    /// (upstream: proxier per family; EndpointSlices routed by AddressType).
    single_stack_service_ignores_slices_of_the_other_family =>
        "single-stack-service-ignores-slices-of-the-other-family";

    /// Test that a NodePort gets one frontend per family, on the unspecified address: every
    /// NodePort address of this node, whatever its Node object's InternalIPs (upstream:
    /// nftables/proxier.go `nodeport-ips` set and `service-nodeports` map; which addresses
    /// are NodePort addresses is the agent's `--nodeport-addresses`).
    node_port_gets_one_frontend_per_family_for_every_node_port_address =>
        "node-port-gets-one-frontend-per-family-for-every-node-port-address";

    /// Test that a LoadBalancer Service gets its NodePort and one frontend per VIP-mode ingress
    /// IP, ipMode unset meaning VIP (upstream: serviceport.go newBaseServiceInfo,
    /// util IsVIPMode).
    load_balancer_service_gets_node_port_and_ingress_ip_frontends =>
        "load-balancer-service-gets-node-port-and-ingress-ip-frontends";

    /// Test that allocateLoadBalancerNodePorts false (no nodePort) leaves no NodePort frontend
    /// (upstream: serviceport.go, NodePort() == 0 means none).
    load_balancer_without_node_port_allocation_has_no_node_port_frontend =>
        "load-balancer-without-node-port-allocation-has-no-node-port-frontend";

    /// Test that ingress entries with ipMode Proxy, or with only a hostname, are not frontends
    /// (upstream: serviceport.go newBaseServiceInfo, `ing.IP == "" || !IsVIPMode(ing)`).
    load_balancer_ingress_in_proxy_mode_or_by_hostname_is_not_a_frontend =>
        "load-balancer-ingress-in-proxy-mode-or-by-hostname-is-not-a-frontend";

    /// Test that spec.externalIPs become ExternalIP frontends only for the Service's families
    /// (upstream: serviceport.go newBaseServiceInfo, MapIPsByIPFamily).
    external_ips_become_frontends_of_the_services_families =>
        "external-ips-become-frontends-of-the-services-families";

    // --- Endpoints -----------------------------------------------------------------------------

    /// Test that all slices of a Service are merged and an endpoint listed twice is one backend
    /// (upstream: endpointslicecache.go addEndpoints, keyed by ip:port).
    slices_of_a_service_are_merged_without_duplicates =>
        "slices-of-a-service-are-merged-without-duplicates";

    /// Test that a slice port matches a ServicePort only when both name and protocol match
    /// (upstream: endpointslicecache.go, ServicePortName{Port, Protocol}).
    ports_are_matched_by_name_and_protocol => "ports-are-matched-by-name-and-protocol";

    /// Test that the target port comes from each endpoint's own slice, so one Service can have
    /// backends on different ports (upstream: endpointslicecache.go addEndpoints(portNum)).
    target_port_is_taken_from_each_slice => "target-port-is-taken-from-each-slice";

    /// Test that an unset ready or serving condition means true and an unset terminating means
    /// false (upstream: endpointslicecache.go addEndpoints conditions).
    unset_conditions_mean_ready_serving_and_not_terminating =>
        "unset-conditions-mean-ready-serving-and-not-terminating";

    /// Test that endpoints with ready false are not backends while a ready one exists
    /// (upstream: topology.go CategorizeEndpoints, IsReady filter).
    not_ready_endpoints_are_not_used => "not-ready-endpoints-are-not-used";

    /// Test that with no ready endpoint the serving-and-terminating ones are used
    /// (upstream: topology.go CategorizeEndpoints, fallback for Cluster policy).
    serving_terminating_endpoints_are_used_when_none_is_ready =>
        "serving-terminating-endpoints-are-used-when-none-is-ready";

    /// Test that serving-and-terminating endpoints are not used while a ready one exists
    /// (upstream: topology.go CategorizeEndpoints).
    serving_terminating_endpoints_are_not_used_while_one_is_ready =>
        "serving-terminating-endpoints-are-not-used-while-one-is-ready";

    /// Test that endpoints with serving false are never used, leaving a reject
    /// (upstream: topology.go CategorizeEndpoints, IsServing && IsTerminating).
    endpoints_that_are_not_serving_are_never_used =>
        "endpoints-that-are-not-serving-are-never-used";

    /// Test that when a running and a terminating endpoint share an address, the running one is
    /// kept (upstream: endpointslicecache.go addEndpoints, `!exists || !terminating`).
    running_endpoint_wins_over_a_terminating_one_with_the_same_address =>
        "running-endpoint-wins-over-a-terminating-one-with-the-same-address";

    /// Test that publishNotReadyAddresses does not override slice conditions: the EndpointSlice
    /// controller already reflects it in `ready` (upstream: endpoint.go IsReady,
    /// endpointslicecache.go reads conditions only).
    publish_not_ready_addresses_is_read_from_slice_conditions_only =>
        "publish-not-ready-addresses-is-read-from-slice-conditions-only";

    /// Test that slices feed the Service of the same name in their own namespace only
    /// (upstream: endpointslicecache.go endpointSliceCacheKeys, NamespacedName).
    endpoint_slices_belong_to_the_service_of_their_namespace =>
        "endpoint-slices-belong-to-the-service-of-their-namespace";

    /// Test that a Service without endpoints rejects on its ClusterIP
    /// (upstream: nftables/proxier.go, !hasEndpoints -> goto reject-chain).
    service_without_endpoints_rejects => "service-without-endpoints-rejects";

    // --- Traffic policies ----------------------------------------------------------------------

    /// Test that internalTrafficPolicy Local sends ClusterIP traffic to this node's endpoints
    /// only (upstream: topology.go CategorizeEndpoints localEndpoints, serviceport.go
    /// InternalPolicyLocal).
    internal_traffic_policy_local_uses_only_this_nodes_endpoints =>
        "internal-traffic-policy-local-uses-only-this-nodes-endpoints";

    /// Test that internalTrafficPolicy Local with endpoints only elsewhere drops
    /// (upstream: nftables/proxier.go, !hasInternalEndpoints with hasEndpoints -> drop).
    internal_traffic_policy_local_without_local_endpoints_drops =>
        "internal-traffic-policy-local-without-local-endpoints-drops";

    /// Test that internalTrafficPolicy Local falls back to this node's serving-and-terminating
    /// endpoints, even while remote ones are ready (upstream: topology.go CategorizeEndpoints,
    /// hasLocalServingTerminatingEndpoints).
    internal_traffic_policy_local_falls_back_to_local_serving_terminating_endpoints =>
        "internal-traffic-policy-local-falls-back-to-local-serving-terminating-endpoints";

    /// Test that externalTrafficPolicy Local sends NodePort and load-balancer traffic to this
    /// node's endpoints and ClusterIP traffic to all (upstream: nftables/proxier.go
    /// externalPolicyChain, serviceport.go ExternalPolicyLocal).
    external_traffic_policy_local_sends_external_traffic_to_this_nodes_endpoints =>
        "external-traffic-policy-local-sends-external-traffic-to-this-nodes-endpoints";

    /// Test that externalTrafficPolicy Local with endpoints only elsewhere drops external
    /// traffic and still serves the ClusterIP (upstream: nftables/proxier.go,
    /// !hasExternalEndpoints -> drop).
    external_traffic_policy_local_without_local_endpoints_drops_external_traffic =>
        "external-traffic-policy-local-without-local-endpoints-drops-external-traffic";

    /// Test that externalTrafficPolicy Local falls back to this node's serving-and-terminating
    /// endpoints while ClusterIP keeps the ready remote ones (upstream: topology.go
    /// CategorizeEndpoints, independent fallback for Cluster and Local).
    external_traffic_policy_local_falls_back_to_local_serving_terminating_endpoints =>
        "external-traffic-policy-local-falls-back-to-local-serving-terminating-endpoints";

    /// Test that traffic from this node's pods to the external addresses (NodePort,
    /// externalIP, load-balancer IP) of an externalTrafficPolicy Local Service gets frontends
    /// of its own (scope "pods") with every endpoint of the cluster, whatever the internal
    /// policy, while other traffic keeps the Local set (upstream: iptables/proxier.go
    /// KUBE-EXT-* "pod traffic for external destinations" -> the cluster policy chain).
    pod_traffic_to_external_addresses_of_a_local_policy_service_goes_to_every_endpoint =>
        "pod-traffic-to-external-addresses-of-a-local-policy-service-goes-to-every-endpoint";

    /// Test that a Service with no usable endpoint anywhere rejects on every frontend, also
    /// under Local policies (upstream: nftables/proxier.go, !hasEndpoints wins over Local).
    service_without_usable_endpoints_rejects_even_under_local_policies =>
        "service-without-usable-endpoints-rejects-even-under-local-policies";

    /// Test that a ClusterIP Service with externalIPs honours externalTrafficPolicy Local on
    /// them (upstream: pkg/api/v1/service ExternallyAccessible, ExternalPolicyLocal).
    external_traffic_policy_local_applies_to_external_ips_of_a_cluster_ip_service =>
        "external-traffic-policy-local-applies-to-external-ips-of-a-cluster-ip-service";

    // --- Topology ------------------------------------------------------------------------------

    /// Test that zone hints narrow cluster traffic to endpoints hinted for this node's zone,
    /// unready endpoints' missing hints notwithstanding (upstream: topology.go
    /// topologyModeFromHints PreferSameZone, availableForTopology).
    zone_hints_narrow_cluster_traffic_to_this_nodes_zone =>
        "zone-hints-narrow-cluster-traffic-to-this-nodes-zone";

    /// Test that zone hints are ignored when a ready endpoint has none
    /// (upstream: topology.go topologyModeFromHints, allEndpointsHaveZoneHints).
    zone_hints_are_ignored_unless_every_ready_endpoint_has_one =>
        "zone-hints-are-ignored-unless-every-ready-endpoint-has-one";

    /// Test that zone hints are ignored when the node has no topology.kubernetes.io/zone label
    /// (upstream: topology.go topologyModeFromHints, "node is missing label").
    zone_hints_are_ignored_when_the_node_has_no_zone_label =>
        "zone-hints-are-ignored-when-the-node-has-no-zone-label";

    /// Test that zone hints are ignored when no endpoint is hinted for this node's zone
    /// (upstream: topology.go topologyModeFromHints, hasEndpointForZone).
    zone_hints_are_ignored_when_none_is_for_this_nodes_zone =>
        "zone-hints-are-ignored-when-none-is-for-this-nodes-zone";

    /// Test that node hints (trafficDistribution PreferSameNode) narrow cluster traffic to this
    /// node's endpoints (upstream: topology.go topologyModeFromHints PreferSameNode).
    node_hints_narrow_cluster_traffic_to_this_node =>
        "node-hints-narrow-cluster-traffic-to-this-node";

    /// Test that node hints fall back to zone hints when none names this node
    /// (upstream: topology.go topologyModeFromHints, node then zone).
    node_hints_fall_back_to_zone_hints_when_none_is_for_this_node =>
        "node-hints-fall-back-to-zone-hints-when-none-is-for-this-node";

    /// Test that topology narrows the Cluster endpoints but not the Local ones
    /// (upstream: topology_test.go "externalTrafficPolicy: Local, topology ignored for Local
    /// endpoints").
    topology_hints_do_not_narrow_local_traffic_policy_endpoints =>
        "topology-hints-do-not-narrow-local-traffic-policy-endpoints";

    /// Test that the serving-and-terminating fallback ignores topology hints
    /// (upstream: topology.go, hints only looked at for ready endpoints).
    topology_hints_are_ignored_when_falling_back_to_terminating_endpoints =>
        "topology-hints-are-ignored-when-falling-back-to-terminating-endpoints";

    /// Test that trafficDistribution alone, with no hints in the slices, filters nothing
    /// (upstream: topology.go, the proxy reads hints, not the field).
    traffic_distribution_without_hints_does_not_filter_endpoints =>
        "traffic-distribution-without-hints-does-not-filter-endpoints";

    // --- Session affinity ----------------------------------------------------------------------

    /// Test that sessionAffinity ClientIP puts its timeout on every frontend of the Service
    /// (upstream: serviceport.go stickyMaxAgeSeconds; nftables/proxier.go affinity sets).
    client_ip_affinity_carries_its_timeout_to_every_frontend =>
        "client-ip-affinity-carries-its-timeout-to-every-frontend";

    /// Test that ClientIP affinity without sessionAffinityConfig uses the API default of 10800s
    /// (upstream: apis/core/v1/defaults.go SetDefaults_Service).
    client_ip_affinity_without_a_timeout_uses_three_hours =>
        "client-ip-affinity-without-a-timeout-uses-three-hours";

    // --- Invalid input -------------------------------------------------------------------------

    /// Test that invalid objects (bad clusterIP, unknown protocol, bad endpoint address, broken
    /// YAML) are reported with their names and skipped while the rest is planned.
    invalid_objects_are_reported_and_the_rest_is_planned =>
        "invalid-objects-are-reported-and-the-rest-is-planned";

    /// Test that planning for a node missing from the manifests is reported and still gives
    /// NodePort frontends (they do not depend on the Node object, as in kube-proxy's default
    /// mode; nothing is local).
    node_missing_from_manifests_still_gets_node_port_frontends =>
        "node-missing-from-manifests-still-gets-node-port-frontends";
}
