//! The web page on the metrics address, in headless Chromium (Debian's
//! `chromium`, installed by scripts/setup.sh): the rendered matrix equals
//! what `weir probe` measures, flows of a denied flood show up in the page's
//! flow table, and the explain endpoint answers for a pair.

use std::process::{Command, Stdio};
use std::time::Duration;
use weir_tests::*;

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Chromium, headless, run as root (no sandbox), with its own profile dir.
fn chromium(profile: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("60")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("chromium (scripts/setup.sh installs it)")
}

/// `(from, to, connected)` of every matrix cell in the dumped DOM.
fn cells(dom: &str) -> Vec<(String, String, bool)> {
    let attr = |tag: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        let i = tag.find(&key).expect(name) + key.len();
        tag[i..i + tag[i..].find('"').expect("quote")].to_string()
    };
    dom.split("<td")
        .skip(1)
        .map(|t| &t[..t.find('>').unwrap_or(t.len())])
        .filter(|t| t.contains("data-connected"))
        .map(|t| {
            (
                attr(t, "data-from"),
                attr(t, "data-to"),
                attr(t, "data-connected") == "true",
            )
        })
        .collect()
}

#[test]
fn the_page_shows_the_probed_matrix_and_live_flows() {
    let addr = free_addr();
    let ns = unique_name("wb");
    let c = TestCluster::up_with(
        "wb",
        &simple_cluster(&ns, &["a", "b", "c"]),
        &["--metrics-addr", &addr],
    );
    // a admits only b.
    c.apply(
        "only-b.yaml",
        &netpol(
            &ns,
            "only-b",
            "{podSelector: {matchLabels: {pod: a}}, ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]}",
        ),
    );
    c.wait_applied(Duration::from_secs(30));
    let probe = c.probe(80, "TCP", &[]);
    let pods: Vec<String> = probe["from"]
        .as_array()
        .expect("from")
        .iter()
        .map(|p| p.as_str().expect("pod").to_string())
        .collect();
    let probed = |f: &str, t: &str| -> Option<bool> {
        let i = pods.iter().position(|p| p == f)?;
        let tos = probe["to"].as_array()?;
        let j = tos.iter().position(|p| p == t)?;
        probe["connected"][i][j].as_bool()
    };
    assert_eq!(probed(&format!("{ns}/c"), &format!("{ns}/a")), Some(false));
    assert_eq!(probed(&format!("{ns}/b"), &format!("{ns}/a")), Some(true));
    // The probe crossed weir: its denied connections are weir's drops.
    assert!(c.drops("policy-denied") > 0, "weir dropped nothing");

    // Denied datagrams c -> a while Chromium has the page open: they show
    // in its flow table.
    let topo = c.topology();
    let a_ip = topo
        .pod(&ns, "a")
        .expect("a")
        .ipv4
        .expect("ipv4")
        .to_string();
    let c_netns = topo.pod(&ns, "c").expect("c").netns.clone();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let flood = Kill(
        Command::new("ip")
            .args(["netns", "exec", &c_netns, "python3", "-c"])
            .arg(
                "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nwhile True:\n    s.sendto(b'x',(sys.argv[1],80))\n    time.sleep(0.05)\n",
            )
            .arg(&a_ip)
            .stdout(Stdio::null())
            .spawn()
            .expect("sender"),
    );

    // The stream carries them (read with curl for 3 s).
    let out = Command::new("curl")
        .args(["-sN", "-m", "3"])
        .arg(format!("http://{addr}/flows?verdict=denied"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"verdict\":\"denied\""), "{text}");
    let profile = c.dir.join("chromium");
    let url = format!("http://{addr}/");
    // Virtual time runs ahead of the real stream: a few loads, until one
    // has caught a flow (each is a fresh page: matrix and flows anew).
    let mut tries = 0;
    let (out, dom) = loop {
        let out = chromium(
            &profile,
            &["--virtual-time-budget=6000", "--dump-dom", &url],
        );
        let dom = String::from_utf8_lossy(&out.stdout).to_string();
        tries += 1;
        if dom.contains("<tr class=\"denied\">") || tries == 5 {
            break (out, dom);
        }
    };
    assert!(
        dom.contains("data-ready=\"true\""),
        "the matrix did not render: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = cells(&dom);
    assert_eq!(got.len(), pods.len() * pods.len(), "{dom}");
    for (f, t, v) in &got {
        if f == t {
            continue;
        }
        assert_eq!(
            Some(*v),
            probed(f, t),
            "the page says {f} -> {t} is {v}, weir probe disagrees"
        );
    }
    assert!(
        dom.contains("<tr class=\"denied\">"),
        "no denied flow in the page's flow table: {dom}"
    );

    // The flood stopped: a new stream has nothing to say, unless it asks
    // for the recent records (`recent=N`, what the page opens with): then
    // at most N of them, the denied c -> a datagrams.
    drop(flood);
    std::thread::sleep(Duration::from_millis(300));
    let stream = |q: &str| -> Vec<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sN", "-m", "1"])
            .arg(format!("http://{addr}/flows?{q}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
            .collect()
    };
    let recent = stream("verdict=denied&recent=3");
    assert_eq!(recent.len(), 3, "{recent:?}");
    for r in &recent {
        assert_eq!(r["verdict"], "denied", "{r}");
        assert_eq!(r["dst_addr"].as_str(), Some(a_ip.as_str()), "{r}");
    }
    let new_only = stream("verdict=denied");
    assert!(
        new_only.is_empty(),
        "records after the flood stopped: {new_only:?}"
    );
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{addr}/flows?recent=100000"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");

    // explain for a pair, as the page's click asks it.
    let explain = |from: &str| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "-w", " %{http_code}"])
            .arg(format!(
                "http://{addr}/api/explain?from={ns}/{from}&to={ns}/a&port=80&protocol=TCP"
            ))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout).to_string();
        let (json, code) = body.rsplit_once(' ').expect("code");
        assert_eq!(code, "200", "{body}");
        serde_json::from_str(json).expect("json")
    };
    let v = explain("b");
    assert_eq!(v["explanation"]["allowed"], true, "{v}");
    assert!(v["text"].as_str().unwrap_or("").contains("only-b"), "{v}");
    let v = explain("c");
    assert_eq!(v["explanation"]["allowed"], false, "{v}");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!(
            "http://{addr}/api/explain?from=nope&to={ns}/a&port=80"
        ))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");

    // The page explains a pair as a click does (`?from=&to=` clicks it).
    let pair_url = format!("{url}?from={ns}/c&to={ns}/a");
    let out = chromium(
        &profile,
        &["--virtual-time-budget=6000", "--dump-dom", &pair_url],
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    let pre = dom.split("id=\"explain\"").nth(1).expect("explain element");
    assert!(
        pre.contains(&format!("data-pair=\"{ns}/c -&gt; {ns}/a\"")),
        "{pre}"
    );
    assert!(pre.contains("deny"), "{pre}");

    // A screenshot renders (docs/web.png was made the same way).
    let png = c.dir.join("web.png");
    let out = chromium(
        &profile,
        &[
            "--virtual-time-budget=6000",
            "--window-size=1280,720",
            &format!("--screenshot={}", png.display()),
            &pair_url,
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    if let Ok(dir) = std::env::var("WEIR_WEB_SCREENSHOT") {
        let _ = std::fs::copy(&png, dir);
    }
}
