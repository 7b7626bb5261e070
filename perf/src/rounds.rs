//! Summaries of repeated, interleaved rounds: (min, median, max) of a
//! metric and its "median [min–max]" table cell. The paper, services and
//! L7 tables report every headline figure this way (issue 22: single
//! rounds on a shared 2-core machine are not trustworthy).
#![forbid(unsafe_code)]

/// (min, median, max) of the finite values; None when there are none.
pub fn stats(v: impl Iterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((v[0], med, v[n - 1]))
}

/// The median of [`stats`].
pub fn med(x: Option<(f64, f64, f64)>) -> Option<f64> {
    x.map(|x| x.1)
}

/// "median [min–max]" with `d` decimals (just the value when all rounds
/// agree or there was one), "—" when nothing was measured.
pub fn cell(x: Option<(f64, f64, f64)>, d: usize) -> String {
    match x {
        None => "—".into(),
        Some((a, m, b)) if format!("{a:.d$}") == format!("{b:.d$}") => format!("{m:.d$}"),
        Some((a, m, b)) => format!("{m:.d$} [{a:.d$}–{b:.d$}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_cells() {
        assert_eq!(stats([3.0, 1.0, 2.0].into_iter()), Some((1.0, 2.0, 3.0)));
        assert_eq!(stats([4.0, 1.0].into_iter()), Some((1.0, 2.5, 4.0)));
        assert_eq!(stats([f64::NAN].into_iter()), None);
        assert_eq!(cell(stats([3.0, 1.0, 2.0].into_iter()), 0), "2 [1–3]");
        assert_eq!(cell(stats([0.5].into_iter()), 2), "0.50");
        assert_eq!(cell(None, 0), "—");
    }
}
