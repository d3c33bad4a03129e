//! A concurrent TCP load generator for `bench e2e`: one tokio runtime whose worker threads live
//! in the client pod's namespace, echo servers on the backend pods' addresses (their listening
//! sockets are created in the pods' namespaces, so accepted connections belong there too), and
//! many connection loops at once, so the machine's CPUs, not one client's round trips, set the
//! rate. Next to each rate it reads the whole machine's busy CPU time from /proc/stat over the
//! same window: CPU per connection (or per request) is the cost a rule layout adds to, and it
//! holds even when the rate is bound by something else.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener as StdListener},
    os::fd::AsFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_tests::{NetNs, Pod};
use nix::sched::{setns, CloneFlags};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    runtime::Runtime,
    task::JoinSet,
    time::timeout,
};

/// Connect and answer timeout of one exchange.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One measurement window.
#[derive(Debug, Clone)]
pub struct Rate {
    /// Completed operations per second (connections, or requests).
    pub per_s: f64,
    /// Busy CPU time of the whole machine per operation, microseconds.
    pub cpu_us: f64,
    /// Operations that failed (timeouts, resets) within the window.
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// What a task shares with the measurement: its successes, failures and the stop signal.
#[derive(Clone, Default)]
struct Shared {
    done: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    first_error: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn record(&self, r: Result<()>) {
        match r {
            Ok(()) => {
                self.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if self.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    if let Ok(mut first) = self.first_error.lock() {
                        *first = Some(format!("{e:#}"));
                    }
                }
            }
        }
    }
}

/// The generator: runtime, servers, and the client's namespace.
pub struct LoadGen {
    rt: Runtime,
    /// Signals the servers' accept loops to end.
    stop: Arc<AtomicBool>,
}

impl LoadGen {
    /// Starts a runtime of `threads` workers in `client`'s namespace and an echo server on port
    /// `port` of every pod in `servers` (each line is answered with the pod's name).
    pub fn start(client: &NetNs, servers: &[&Pod], port: u16, threads: usize) -> Result<Self> {
        let ns = Arc::new(File::open(client.path()).context("open the client namespace")?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .on_thread_start(move || {
                // Every thread of the runtime sends from the client pod, never from the root
                // namespace: a thread that cannot join it must not run.
                if let Err(e) = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET) {
                    panic!("setns into the client namespace: {e}");
                }
            })
            .build()
            .context("start the load generator's runtime")?;
        let stop = Arc::new(AtomicBool::new(false));
        for pod in servers {
            let addr = pod.addr(port);
            let listener = pod
                .ns()
                .enter(|| -> Result<StdListener> {
                    let l = StdListener::bind(addr)?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })
                .with_context(|| format!("listen on {addr}"))?;
            let answer: Arc<[u8]> = format!("{}\n", pod.name()).into_bytes().into();
            let stop = stop.clone();
            let _guard = rt.enter();
            let listener = TcpListener::from_std(listener)?;
            rt.spawn(serve(listener, answer, stop));
        }
        Ok(LoadGen { rt, stop })
    }

    /// New connections: `concurrency` loops, each connecting to a random one of `vips`, sending
    /// one request, reading the answer and closing, for `warmup` then `window` (measured).
    pub fn connections(
        &self,
        vips: &[SocketAddr],
        concurrency: usize,
        warmup: Duration,
        window: Duration,
    ) -> Result<Rate> {
        let vips: Arc<[SocketAddr]> = vips.into();
        self.measure(concurrency, warmup, window, move |k, sh| {
            let vips = vips.clone();
            async move {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (k as u64).wrapping_mul(0x2545_f491);
                let mut line = String::new();
                while !sh.stopped() {
                    let addr = vips[lcg(&mut x) as usize % vips.len()];
                    let r = exchange_new(addr, &mut line).await;
                    sh.record(r.with_context(|| format!("new connection to {addr}")));
                }
            }
        })
    }

    /// Requests on established connections: `concurrency` connections (to random `vips`),
    /// each sending a request and reading its answer in a loop.
    pub fn requests(
        &self,
        vips: &[SocketAddr],
        concurrency: usize,
        warmup: Duration,
        window: Duration,
    ) -> Result<Rate> {
        let vips: Arc<[SocketAddr]> = vips.into();
        self.measure(concurrency, warmup, window, move |k, sh| {
            let vips = vips.clone();
            async move {
                let mut x = 0x5851_f42d_4c95_7f2du64 ^ (k as u64).wrapping_mul(0x1405_7b7e);
                let addr = vips[lcg(&mut x) as usize % vips.len()];
                let s = match timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return sh.record(Err(e).context(format!("connect {addr}"))),
                    Err(e) => return sh.record(Err(e).context(format!("connect {addr}"))),
                };
                let _ = s.set_nodelay(true);
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                while !sh.stopped() {
                    let res = ask(&mut r, &mut w, &mut line).await;
                    let failed = res.is_err();
                    sh.record(res.with_context(|| format!("request to {addr}")));
                    if failed {
                        return;
                    }
                }
            }
        })
    }

    /// Runs `concurrency` copies of `task` for `warmup` + `window`; counts over `window`.
    fn measure<F, Fut>(
        &self,
        concurrency: usize,
        warmup: Duration,
        window: Duration,
        task: F,
    ) -> Result<Rate>
    where
        F: Fn(usize, Shared) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let sh = Shared::default();
        let (done, errors) = (&sh.done, &sh.errors);
        let mut set = JoinSet::new();
        for k in 0..concurrency {
            set.spawn_on(task(k, sh.clone()), self.rt.handle());
        }
        std::thread::sleep(warmup);
        let (d0, e0, c0, t0) = (
            done.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            busy_cpu()?,
            Instant::now(),
        );
        std::thread::sleep(window);
        let (d1, e1, c1, t1) = (
            done.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            busy_cpu()?,
            t0.elapsed(),
        );
        sh.stop.store(true, Ordering::Relaxed);
        self.rt
            .block_on(async { while set.join_next().await.is_some() {} });
        let n = d1 - d0;
        if n == 0 {
            bail!("no operation completed in {window:?} ({} errors)", e1 - e0);
        }
        Ok(Rate {
            per_s: n as f64 / t1.as_secs_f64(),
            cpu_us: (c1 - c0) * 1e6 / n as f64,
            errors: e1 - e0,
            first_error: sh.first_error.lock().ok().and_then(|f| f.clone()),
        })
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Accepts connections until `stop`; each is answered line by line.
async fn serve(listener: TcpListener, answer: Arc<[u8]>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((s, _))) = timeout(Duration::from_millis(200), listener.accept()).await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if w.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

/// Connect, one request, its answer, close.
async fn exchange_new(addr: SocketAddr, line: &mut String) -> Result<()> {
    let s = timeout(IO_TIMEOUT, TcpStream::connect(addr)).await??;
    s.set_nodelay(true)?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    ask(&mut r, &mut w, line).await
}

/// One request and its answer line.
async fn ask(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    line: &mut String,
) -> Result<()> {
    w.write_all(b"x\n").await?;
    line.clear();
    if timeout(IO_TIMEOUT, r.read_line(line)).await?? == 0 {
        bail!("closed without an answer");
    }
    Ok(())
}

/// A small deterministic generator (Knuth's MMIX LCG), high bits.
pub fn lcg(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *x >> 33
}

/// The machine's busy CPU time so far (every CPU, all but idle and iowait), seconds.
fn busy_cpu() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 8 {
        bail!("unexpected /proc/stat line: {line}");
    }
    // user nice system idle iowait irq softirq steal
    let busy = f[0] + f[1] + f[2] + f[5] + f[6];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(busy as f64 / hz.max(1) as f64)
}
