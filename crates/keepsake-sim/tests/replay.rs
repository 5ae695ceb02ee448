//! A seed is a complete description of a run: replayed, it gives the same trace. And the
//! hundred seeds CI runs on every change keep every promise.

use std::process::Command;

fn run_seed(seed: u64) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_keepsake-sim"))
        .args(["--seeds", "1", "--from", &seed.to_string()])
        .output()
        .expect("the simulator runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "seed {seed} failed:\n{text}");
    text.lines()
        .find(|l| l.starts_with("seed "))
        .expect("a line for the seed")
        .to_string()
}

#[test]
fn the_same_seed_twice_gives_the_same_trace_and_two_seeds_differ() {
    let first = run_seed(11);
    assert_eq!(first, run_seed(11));
    assert_ne!(
        first.split_whitespace().nth(3),
        run_seed(12).split_whitespace().nth(3),
        "two seeds made the same trace: the seed does not reach the run"
    );
    // The run did something worth checking: photos taken and faults injected.
    assert!(!first.contains(" 0 photos"), "{first}");
    assert!(!first.contains(" 0 server and 0 device crashes"), "{first}");
}

#[test]
fn a_hundred_simulated_seeds_lose_nothing_duplicate_nothing_and_converge() {
    let out = Command::new(env!("CARGO_BIN_EXE_keepsake-sim"))
        .args(["--seeds", "100", "--from", "0"])
        .output()
        .expect("the simulator runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default().to_string();
    println!("{summary}");
    assert!(out.status.success(), "{text}");
    assert!(
        summary.starts_with("100 seeds") && summary.contains("0 failed"),
        "{summary}"
    );
}
