//! The kernel features the programs need, probed at start as Cilium does (tiny programs the
//! verifier accepts or refuses, a test run, a link the kernel understands or not), so a kernel
//! without one is refused by name instead of loading programs that would quietly misbehave
//! (on a kernel without `BPF_FIB_LOOKUP_SRC`, for one, every SNAT lookup fails and no flow to
//! another node would ever be SNATed).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use aya::{
    programs::ProgramType,
    sys::{is_helper_supported, BpfHelper},
};

use super::sys::{sys_bpf, BPF_LINK_CREATE, BPF_PROG_LOAD, BPF_PROG_TEST_RUN};

/// A kernel feature the programs use, and the first Linux release that has it.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    pub name: &'static str,
    /// What the programs use it for.
    pub used_for: &'static str,
    /// The first Linux release with it, e.g. "6.7".
    pub since: &'static str,
    /// Whether this kernel has it.
    probe: fn() -> std::io::Result<bool>,
}

/// tcx: bpf_link-based tc attachment (`BPF_TCX_INGRESS`), how the tc programs attach.
pub const TCX: Feature = Feature {
    name: "tcx (BPF_TCX_INGRESS links)",
    used_for: "attaching the tc programs to pod interfaces and node devices",
    since: "6.6",
    probe: has_tcx,
};
/// `bpf_redirect_neigh`: how tc sends every packet it rewrites.
pub const REDIRECT_NEIGH: Feature = Feature {
    name: "bpf_redirect_neigh",
    used_for: "sending rewritten packets out of the device their route names",
    since: "5.10",
    probe: || has_helper(BpfHelper::BPF_FUNC_redirect_neigh),
};
/// `BPF_FIB_LOOKUP_SKIP_NEIGH`: a route without a resolved neighbour still answers.
pub const FIB_SKIP_NEIGH: Feature = Feature {
    name: "bpf_fib_lookup flag BPF_FIB_LOOKUP_SKIP_NEIGH",
    used_for: "routing packets whose next hop is not resolved yet",
    since: "6.3",
    probe: || has_fib_flag(BPF_FIB_LOOKUP_SKIP_NEIGH),
};
/// `BPF_FIB_LOOKUP_SRC`: the source address of a route, the SNAT address.
pub const FIB_SRC: Feature = Feature {
    name: "bpf_fib_lookup flag BPF_FIB_LOOKUP_SRC",
    used_for: "the source address of flows SNATed to backends on other nodes",
    since: "6.7",
    probe: || has_fib_flag(BPF_FIB_LOOKUP_SRC),
};

/// Every feature probed, in the order they are checked.
pub const ALL: [Feature; 4] = [TCX, REDIRECT_NEIGH, FIB_SKIP_NEIGH, FIB_SRC];

/// Probes every feature; returns the first one the kernel lacks.
pub fn missing() -> std::io::Result<Option<Feature>> {
    for f in ALL {
        if !(f.probe)()? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

const BPF_FIB_LOOKUP_SKIP_NEIGH: i32 = 4;
const BPF_FIB_LOOKUP_SRC: i32 = 16;
const BPF_FUNC_FIB_LOOKUP: i32 = 69;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;

fn has_helper(helper: BpfHelper) -> std::io::Result<bool> {
    is_helper_supported(ProgramType::SchedClassifier, helper).map_err(std::io::Error::other)
}

/// tcx exists when a link of attach type `BPF_TCX_INGRESS` to no interface (index 0) fails
/// for want of the interface (ENODEV); a kernel without tcx refuses the attach type (EINVAL).
/// Nothing is attached either way.
fn has_tcx() -> std::io::Result<bool> {
    let prog = load_sched_cls(&[mov64_imm(0, 0), exit()])?;
    let mut attr = [0u64; 16];
    // link_create: prog_fd, target_ifindex (0), attach_type.
    attr[0] = prog.as_raw_fd() as u32 as u64;
    attr[1] = u64::from(BPF_TCX_INGRESS);
    match sys_bpf(BPF_LINK_CREATE, &mut attr) {
        Ok(fd) => {
            // Cannot happen (no interface 0); close what the kernel gave.
            // SAFETY: the kernel just returned this descriptor to us.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether `bpf_fib_lookup` knows flag `flag`: a tc program calls it with a zeroed IPv4
/// request and returns what it answered; an unknown flag is -EINVAL before anything else.
pub fn has_fib_flag(flag: i32) -> std::io::Result<bool> {
    let mut insns = vec![mov64_reg(6, 1), mov64_imm(1, 0)];
    // struct bpf_fib_lookup (64 bytes) on the stack at r10 - 64, zeroed, family AF_INET.
    for i in 0..8 {
        insns.push(stx_dw(10, 1, -64 + 8 * i));
    }
    insns.extend([
        st_b(10, -64, 2),
        mov64_reg(1, 6),
        mov64_reg(2, 10),
        add64_imm(2, -64),
        mov64_imm(3, 64),
        mov64_imm(4, flag),
        call(BPF_FUNC_FIB_LOOKUP),
        exit(),
    ]);
    let prog = load_sched_cls(&insns)?;
    let retval = test_run(&prog)?;
    Ok(retval as i32 != -libc::EINVAL)
}

/// Loads a SCHED_CLS program of `insns`.
fn load_sched_cls(insns: &[u64]) -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = [0u64; 16];
    // prog_load: prog_type, insn_cnt, insns, license.
    attr[0] = u64::from(BPF_PROG_TYPE_SCHED_CLS) | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    // `insns` and `license` outlive the call.
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Runs `prog` once on a zeroed Ethernet + IPv4 frame; returns its return value.
fn test_run(prog: &OwnedFd) -> std::io::Result<u32> {
    let data = [0u8; 64];
    let mut attr = [0u64; 16];
    // test: prog_fd, retval (out), data_size_in, data_size_out, data_in, data_out, repeat.
    attr[0] = prog.as_raw_fd() as u32 as u64;
    attr[1] = data.len() as u64;
    attr[2] = data.as_ptr() as u64;
    attr[4] = 1;
    // `data` outlives the call; no data_out is asked for.
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok((attr[0] >> 32) as u32)
}

/// One eBPF instruction: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst | src << 4) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

fn mov64_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}

fn mov64_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0)
}

fn add64_imm(dst: u8, imm: i32) -> u64 {
    insn(0x07, dst, 0, 0, imm)
}

/// `*(u64 *)(dst + off) = src`.
fn stx_dw(dst: u8, src: u8, off: i16) -> u64 {
    insn(0x7b, dst, src, off, 0)
}

/// `*(u8 *)(dst + off) = imm`.
fn st_b(dst: u8, off: i16, imm: i32) -> u64 {
    insn(0x72, dst, 0, off, imm)
}

fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}

fn exit() -> u64 {
    insn(0x95, 0, 0, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test that instructions encode as the kernel's struct bpf_insn (little-endian).
    #[test]
    fn instructions_encode_as_struct_bpf_insn() {
        assert_eq!(mov64_imm(0, 0), 0xb7);
        assert_eq!(exit(), 0x95);
        assert_eq!(
            mov64_reg(6, 1).to_le_bytes(),
            [0xbf, 0x16, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            stx_dw(10, 1, -64).to_le_bytes(),
            [0x7b, 0x1a, 0xc0, 0xff, 0, 0, 0, 0]
        );
        assert_eq!(
            add64_imm(2, -64).to_le_bytes(),
            [0x07, 0x02, 0, 0, 0xc0, 0xff, 0xff, 0xff]
        );
    }
}
