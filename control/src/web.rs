//! The web page on the metrics address (`/`): the cluster's reachability
//! matrix from the compiled policy, the flows as they happen (from
//! `/flows`), and `explain` for a clicked pair. One self-contained HTML file
//! (`control/web/index.html`, compiled in with `include_str!`: no bundler,
//! no CDN) and two small JSON endpoints it calls:
//!
//! - `/api/matrix?port=80&protocol=TCP`: `weir policy check`'s report for
//!   the running cluster (the same computation; without `port`, every port
//!   the pods declare);
//! - `/api/explain?from=NS/POD&to=NS/POD&port=80&protocol=TCP`: `weir
//!   explain`'s answer, as JSON plus its text.
#![forbid(unsafe_code)]

use crate::flows::percent_decode;
use crate::policy_cmd::{self, Source};
use crate::state::StateDir;
use serde_json::json;

/// The page.
pub const INDEX_HTML: &str = include_str!("../web/index.html");

/// A request's answer: HTTP status line and JSON body.
pub type Answer = (&'static str, String);

fn bad(msg: String) -> Answer {
    ("400 Bad Request", json!({ "error": msg }).to_string())
}

fn params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn get<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

/// `port` and `protocol` of a query (protocol defaults to TCP).
fn port_proto(p: &[(String, String)]) -> Result<Option<(u16, weir_model::Protocol)>, String> {
    let Some(port) = get(p, "port") else {
        return Ok(None);
    };
    let spec = format!("{port}/{}", get(p, "protocol").unwrap_or("TCP"));
    policy_cmd::parse_port(&spec).map(Some)
}

/// `/api/matrix`.
pub fn matrix(state: &StateDir, query: &str) -> Answer {
    let p = params(query);
    let ports = match port_proto(&p) {
        Ok(pp) => pp.into_iter().collect::<Vec<_>>(),
        Err(e) => return bad(e),
    };
    let report = policy_cmd::input(Source::Cluster(state))
        .and_then(|input| Ok(weir_policy::check::check(&input, &ports)?));
    match report {
        Ok(r) => ("200 OK", json!(r).to_string()),
        Err(e) => (
            "500 Internal Server Error",
            json!({ "error": format!("{e:#}") }).to_string(),
        ),
    }
}

/// `/api/explain`.
pub fn explain(state: &StateDir, query: &str) -> Answer {
    let p = params(query);
    let pod = |k: &str| -> Result<(String, String), String> {
        let v = get(&p, k).ok_or(format!("{k}: missing (NS/POD)"))?;
        match v.split_once('/') {
            Some((ns, pod)) if !ns.is_empty() && !pod.is_empty() => {
                Ok((ns.to_string(), pod.to_string()))
            }
            _ => Err(format!("{k}: {v:?} is not NS/POD")),
        }
    };
    let (from, to, (port, proto)) = match (pod("from"), pod("to"), port_proto(&p)) {
        (Ok(f), Ok(t), Ok(Some(pp))) => (f, t, pp),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
        (_, _, Ok(None)) => return bad("port: missing".into()),
    };
    let e = policy_cmd::input(Source::Cluster(state)).and_then(|input| {
        Ok(weir_policy::explain(
            &input,
            (&from.0, &from.1),
            (&to.0, &to.1),
            proto,
            port,
        )?)
    });
    match e {
        Ok(e) => (
            "200 OK",
            json!({ "text": e.to_string(), "explanation": e }).to_string(),
        ),
        Err(e) => bad(format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_queries_are_400() {
        let st = StateDir::new("weir-web-unit-none");
        assert_eq!(matrix(&st, "port=x").0, "400 Bad Request");
        assert_eq!(explain(&st, "from=a&to=b/c&port=80").0, "400 Bad Request");
        assert_eq!(explain(&st, "from=a/b&to=b/c").0, "400 Bad Request");
        let (s, body) = explain(&st, "from=a/b&to=b/c&port=80&protocol=ICMP");
        assert_eq!(s, "400 Bad Request", "{body}");
        assert!(INDEX_HTML.contains("<table"));
    }
}
