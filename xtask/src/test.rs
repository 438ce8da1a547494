use clap::Args;
#[derive(Args)]
pub struct Options {}
pub fn run(_o: Options) -> anyhow::Result<()> { todo!() }
