//! Kubernetes label selectors (`metav1.LabelSelector`): `matchLabels` and
//! `matchExpressions` (In, NotIn, Exists, DoesNotExist), ANDed. An empty
//! selector selects everything.

use serde::Serialize;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// `{}`: selects everything.
    pub fn everything() -> Selector {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.op {
                    Operator::In => v.is_some_and(|v| r.values.contains(v)),
                    // NotIn matches objects without the key (upstream).
                    Operator::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => v.is_some(),
                    Operator::DoesNotExist => v.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: Operator, values: &[&str]) -> Selector {
        Selector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: key.into(),
                op,
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn operators() {
        let web = labels(&[("app", "web"), ("tier", "fe")]);
        let db = labels(&[("app", "db")]);
        let none = labels(&[]);
        let cases = [
            (
                req("app", Operator::In, &["web", "api"]),
                [true, false, false],
            ),
            (req("app", Operator::NotIn, &["web"]), [false, true, true]),
            (req("tier", Operator::Exists, &[]), [true, false, false]),
            (
                req("tier", Operator::DoesNotExist, &[]),
                [false, true, true],
            ),
            (Selector::everything(), [true, true, true]),
        ];
        for (sel, want) in cases {
            let got = [sel.matches(&web), sel.matches(&db), sel.matches(&none)];
            assert_eq!(got, want, "{sel:?}");
        }
        let both = Selector {
            match_labels: labels(&[("app", "web")]),
            ..req("tier", Operator::In, &["be"])
        };
        assert!(!both.matches(&web), "matchLabels AND matchExpressions");
    }
}
