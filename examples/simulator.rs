//! The balena API simulator on its own, serving a world loaded from a JSON dump
//! (`World::from_dump`): the conformance suite (tests/conformance) loads the rows of a seeded
//! open-balena-api into it, then asks both servers the same requests.
//!
//! `cargo run --example simulator -- DUMP.json [LISTEN]` (LISTEN defaults to 127.0.0.1:0).
//! Prints `listening on http://ADDR` once it serves; stops on SIGTERM, SIGINT or end of stdin.

use balena_simulator::{Simulator, World};

#[actix_rt::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: simulator DUMP.json [LISTEN]");
        std::process::exit(2);
    };
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let text = std::fs::read_to_string(&path)?;
    let dump: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| std::io::Error::other(format!("{path}: {e}")))?;
    let world =
        World::from_dump(&dump).map_err(|e| std::io::Error::other(format!("{path}: {e}")))?;
    let sim = Simulator::serve(world, &listen, None)?;
    println!("listening on {}", sim.url());
    // Stop on a signal, or when the parent closes stdin.
    let stdin_closed = actix_rt::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
    sim.stop().await;
    Ok(())
}
