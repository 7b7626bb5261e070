//! Prints what a Maglev table of weir does when one backend goes: per
//! backend count N, the table size, the build time, the spread (min/max
//! entries per backend) and the share of entries of kept backends that
//! moved. `cargo run --release -p weir-dataplane --example maglev_moves`.

use std::time::Instant;
use weir_dataplane::maglev;

fn main() {
    println!("backends  size   build_us  min  max  moved_kept_%  moved_total_%");
    for n in [2usize, 3, 10, 100, 1000] {
        let keys: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                format!(
                    "default/web-{i}|10.{}.{}.{}",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                )
                .into_bytes()
            })
            .collect();
        let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_slice()).collect();
        let m = maglev::size_for(n);
        let t0 = Instant::now();
        let before = maglev::build(&refs, m);
        let us = t0.elapsed().as_micros();
        let mut count = vec![0usize; n];
        for e in &before {
            count[*e as usize] += 1;
        }
        let gone = n / 2;
        let mut rest = refs.clone();
        rest.remove(gone);
        let after = maglev::build(&rest, m);
        let old = |i: u16| if (i as usize) < gone { i } else { i + 1 };
        let moved_kept = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b as usize != gone && **b != old(**a))
            .count();
        let moved_total = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != old(**a))
            .count();
        println!(
            "{n:8}  {m:5}  {us:8}  {:3}  {:3}  {:12.2}  {:13.2}",
            count.iter().min().unwrap(),
            count.iter().max().unwrap(),
            100.0 * moved_kept as f64 / m as f64,
            100.0 * moved_total as f64 / m as f64
        );
    }
}
