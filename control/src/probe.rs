//! `weir probe`: real connections from inside source pods' namespaces to
//! destination pods, shown as a from×to reachability matrix — the shape of
//! upstream's NetworkPolicy e2e truth tables ("." connected, "X" not).

use serde::Serialize;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use weir_topo::{Cluster, RealizedPod};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            _ => Err(format!("--protocol: {s:?} is not TCP or UDP")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl std::str::FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" | "4" => Ok(Family::Ipv4),
            "ipv6" | "6" => Ok(Family::Ipv6),
            _ => Err(format!("--family: {s:?} is not ipv4 or ipv6")),
        }
    }
}

pub struct ProbeSpec {
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
    pub timeout: Duration,
    /// Attempts per pair before it counts as blocked.
    pub attempts: u32,
}

/// One probe's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub from: String,
    pub to: String,
    pub connected: bool,
    /// "ok", "refused", "timeout", "unreachable", "wrong-peer:<name>", "no-address", or an error.
    pub detail: String,
    pub rtt_us: Option<u64>,
}

/// The whole matrix (documented in docs/cli.md).
#[derive(Debug, Clone, Serialize)]
pub struct Matrix {
    pub port: u16,
    pub protocol: Protocol,
    pub family: Family,
    pub from: Vec<String>,
    pub to: Vec<String>,
    /// `connected[i][j]`: from[i] reached to[j].
    pub connected: Vec<Vec<bool>>,
    pub probes: Vec<Probe>,
}

pub fn select<'a>(cluster: &'a Cluster, sel: Option<&str>) -> anyhow::Result<Vec<&'a RealizedPod>> {
    let mut pods: Vec<&RealizedPod> = cluster.pods.iter().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let Some(sel) = sel else { return Ok(pods) };
    let out: Vec<_> = match sel.split_once('/') {
        Some((ns, "*")) | Some((ns, "")) => {
            pods.into_iter().filter(|p| p.namespace == ns).collect()
        }
        Some((ns, name)) => pods
            .into_iter()
            .filter(|p| p.namespace == ns && p.name == name)
            .collect(),
        None => pods.into_iter().filter(|p| p.namespace == sel).collect(),
    };
    anyhow::ensure!(
        !out.is_empty(),
        "{sel}: no such pod or namespace (use NS/POD or NS)"
    );
    Ok(out)
}

pub fn run(from: &[&RealizedPod], to: &[&RealizedPod], spec: &ProbeSpec) -> Matrix {
    let pairs: Vec<(&RealizedPod, &RealizedPod)> = from
        .iter()
        .flat_map(|f| to.iter().map(move |t| (*f, *t)))
        .collect();
    let mut probes: Vec<Probe> = Vec::with_capacity(pairs.len());
    // Bounded concurrency: each probe is a thread inside the source pod's netns.
    for chunk in pairs.chunks(64) {
        let results: Vec<Probe> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(f, t)| s.spawn(move || probe_pair(f, t, spec)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("probe thread"))
                .collect()
        });
        probes.extend(results);
    }
    let connected = from
        .iter()
        .enumerate()
        .map(|(i, _)| {
            (0..to.len())
                .map(|j| probes[i * to.len() + j].connected)
                .collect()
        })
        .collect();
    Matrix {
        port: spec.port,
        protocol: spec.protocol,
        family: spec.family,
        from: from.iter().map(|p| full(p)).collect(),
        to: to.iter().map(|p| full(p)).collect(),
        connected,
        probes,
    }
}

fn full(p: &RealizedPod) -> String {
    format!("{}/{}", p.namespace, p.name)
}

fn probe_pair(from: &RealizedPod, to: &RealizedPod, spec: &ProbeSpec) -> Probe {
    let addr: Option<IpAddr> = match spec.family {
        Family::Ipv4 => to.ipv4.map(IpAddr::V4),
        Family::Ipv6 => to.ipv6.map(IpAddr::V6),
    };
    let mut out = Probe {
        from: full(from),
        to: full(to),
        connected: false,
        detail: "no-address".into(),
        rtt_us: None,
    };
    let Some(addr) = addr else { return out };
    let sa = SocketAddr::new(addr, spec.port);
    let expect = to.name.clone();
    let proto = spec.protocol;
    let timeout = spec.timeout;
    for _ in 0..spec.attempts.max(1) {
        let expect = expect.clone();
        let r = weir_topo::netns::run_in(&from.netns, move || match proto {
            Protocol::Tcp => tcp_once(sa, timeout, &expect),
            Protocol::Udp => udp_once(sa, timeout, &expect),
        });
        let (ok, detail, rtt) = match r {
            Ok(x) => x,
            Err(e) => (false, format!("error: {e}"), None),
        };
        out.connected = ok;
        out.detail = detail;
        out.rtt_us = rtt;
        if ok {
            break;
        }
    }
    out
}

fn classify(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        TimedOut | WouldBlock => "timeout".into(),
        ConnectionRefused => "refused".into(),
        HostUnreachable | NetworkUnreachable => "unreachable".into(),
        _ => format!("error: {e}"),
    }
}

fn check_peer(got: &[u8], expect: &str, t0: Instant) -> (bool, String, Option<u64>) {
    let name = String::from_utf8_lossy(got).trim().to_string();
    if name == expect {
        (true, "ok".into(), Some(t0.elapsed().as_micros() as u64))
    } else {
        (false, format!("wrong-peer:{name}"), None)
    }
}

fn tcp_once(sa: SocketAddr, timeout: Duration, expect: &str) -> (bool, String, Option<u64>) {
    let t0 = Instant::now();
    let mut s = match TcpStream::connect_timeout(&sa, timeout) {
        Ok(s) => s,
        Err(e) => return (false, classify(&e), None),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 255 {
                    break;
                }
            }
            Err(e) => return (false, classify(&e), None),
        }
    }
    check_peer(&buf, expect, t0)
}

fn udp_once(sa: SocketAddr, timeout: Duration, expect: &str) -> (bool, String, Option<u64>) {
    let bind: SocketAddr = if sa.is_ipv4() {
        "0.0.0.0:0".parse().expect("addr")
    } else {
        "[::]:0".parse().expect("addr")
    };
    let t0 = Instant::now();
    let s = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return (false, format!("error: {e}"), None),
    };
    let _ = s.set_read_timeout(Some(timeout));
    if let Err(e) = s.connect(sa).and_then(|_| s.send(b"hostname\n")) {
        return (false, classify(&e), None);
    }
    let mut buf = [0u8; 256];
    match s.recv(&mut buf) {
        Ok(n) => check_peer(&buf[..n], expect, t0),
        Err(e) => (false, classify(&e), None),
    }
}

/// `weir probe --to-service`: per source pod, which backend answered each
/// of its connections to the ClusterIP (documented in docs/cli.md).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceProbe {
    /// `namespace/name` of the Service.
    pub service: String,
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub sources: Vec<ServiceSource>,
}

/// One source pod's connections.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceSource {
    pub from: String,
    /// Per connection: the backend pod's name, or `"!<detail>"` (refused,
    /// timeout, ...) when it failed.
    pub answers: Vec<String>,
    /// Backend name → connections it answered.
    pub backends: std::collections::BTreeMap<String, usize>,
    pub failed: usize,
}

/// Makes `count` real connections from each source pod to the Service's
/// ClusterIP of `family` and records which pod answered each.
pub fn run_service(
    cluster: &Cluster,
    from: &[&RealizedPod],
    service: &str,
    spec: &ProbeSpec,
    count: usize,
) -> anyhow::Result<ServiceProbe> {
    let (ns, name) = service
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--to-service: {service:?} is not NS/NAME"))?;
    let svc = cluster
        .services
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
        .ok_or_else(|| anyhow::anyhow!("services/{ns}/{name}: not found"))?;
    let want_v4 = spec.family == Family::Ipv4;
    let ip = svc
        .cluster_ips
        .iter()
        .find(|ip| ip.is_ipv4() == want_v4)
        .copied()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "services/{ns}/{name}: no {} ClusterIP",
                if want_v4 { "IPv4" } else { "IPv6" }
            )
        })?;
    let sa = SocketAddr::new(ip, spec.port);
    let results: Vec<ServiceSource> = std::thread::scope(|s| {
        let handles: Vec<_> = from
            .iter()
            .map(|f| {
                s.spawn(move || {
                    let mut answers = Vec::with_capacity(count);
                    for _ in 0..count {
                        let (proto, timeout) = (spec.protocol, spec.timeout);
                        let r = weir_topo::netns::run_in(&f.netns, move || match proto {
                            Protocol::Tcp => tcp_once(sa, timeout, ""),
                            Protocol::Udp => udp_once(sa, timeout, ""),
                        });
                        answers.push(match r {
                            // check_peer says wrong-peer:<name> for any name
                            // when nothing is expected.
                            Ok((_, d, _)) => match d.strip_prefix("wrong-peer:") {
                                Some(n) if !n.is_empty() => n.to_string(),
                                _ => format!("!{d}"),
                            },
                            Err(e) => format!("!error: {e}"),
                        });
                    }
                    let mut backends = std::collections::BTreeMap::new();
                    let mut failed = 0;
                    for a in &answers {
                        if a.starts_with('!') {
                            failed += 1;
                        } else {
                            *backends.entry(a.clone()).or_insert(0) += 1;
                        }
                    }
                    ServiceSource {
                        from: full(f),
                        answers,
                        backends,
                        failed,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    });
    Ok(ServiceProbe {
        service: service.to_string(),
        cluster_ip: ip,
        port: spec.port,
        protocol: spec.protocol,
        sources: results,
    })
}

/// The table of a [`ServiceProbe`]: per source, connections per backend.
pub fn render_service(p: &ServiceProbe) -> String {
    let mut out = format!(
        "{} {}:{} ({})\n",
        match p.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        },
        p.cluster_ip,
        p.port,
        p.service
    );
    for s in &p.sources {
        let per: Vec<String> = s.backends.iter().map(|(b, n)| format!("{b}={n}")).collect();
        out.push_str(&format!(
            "{}  {}  failed={}\n",
            s.from,
            if per.is_empty() {
                "<none>".to_string()
            } else {
                per.join(" ")
            },
            s.failed
        ));
    }
    out
}

/// The truth-table rendering: rows are sources, columns destinations.
pub fn render(m: &Matrix) -> String {
    let mut out = String::new();
    let w = m.from.iter().map(|s| s.len()).max().unwrap_or(4).max(4);
    let cw = m.to.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    out.push_str(&format!(
        "{} {}/{} ({})  . = connected, X = blocked\n",
        m.protocol_str(),
        m.port,
        match m.family {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        },
        "from \\ to"
    ));
    out.push_str(&format!("{:w$}", "", w = w));
    for t in &m.to {
        out.push_str(&format!(" {t:>cw$}"));
    }
    out.push('\n');
    for (i, f) in m.from.iter().enumerate() {
        out.push_str(&format!("{f:w$}"));
        for j in 0..m.to.len() {
            let c = if m.connected[i][j] { "." } else { "X" };
            out.push_str(&format!(" {c:>cw$}"));
        }
        out.push('\n');
    }
    let n = m.probes.len();
    let ok = m.probes.iter().filter(|p| p.connected).count();
    out.push_str(&format!("{ok}/{n} connected\n"));
    out
}

impl Matrix {
    fn protocol_str(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        assert_eq!("tcp".parse::<Protocol>(), Ok(Protocol::Tcp));
        assert_eq!("UDP".parse::<Protocol>(), Ok(Protocol::Udp));
        assert!("sctp".parse::<Protocol>().is_err());
        assert_eq!("6".parse::<Family>(), Ok(Family::Ipv6));
    }

    #[test]
    fn renders_truth_table() {
        let m = Matrix {
            port: 80,
            protocol: Protocol::Tcp,
            family: Family::Ipv4,
            from: vec!["x/a".into(), "x/b".into()],
            to: vec!["x/a".into(), "x/b".into()],
            connected: vec![vec![true, false], vec![true, true]],
            probes: vec![],
        };
        let s = render(&m);
        let rows: Vec<Vec<&str>> = s.lines().map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.contains(&vec!["x/a", ".", "X"]), "{s}");
        assert!(rows.contains(&vec!["x/b", ".", "."]), "{s}");
        assert!(
            s.contains("3/4 connected") || s.contains("0/0 connected"),
            "{s}"
        );
    }
}
