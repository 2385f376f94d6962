//! `pgpilot-bench` (`make bench`): pgpilot and Patroni side by side on the local cluster; see
//! `pgpilot_e2e::bench`.

use anyhow::Result;
use clap::Parser;
use pgpilot_e2e::bench::{self, Args};

#[tokio::main]
async fn main() -> Result<()> {
    bench::run(Args::parse()).await
}
