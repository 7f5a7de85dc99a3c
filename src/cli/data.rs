//! `dpgan data fetch`: MNIST or Fashion-MNIST from a public mirror, every file checked against
//! the checksum pinned in `data::fetch` before it is put in place.
use std::path::PathBuf;

use clap::{Args, Subcommand};
use dpgan::data::default_data_root;
use dpgan::data::fetch::{fetch, known, Fetched};
use dpgan::{Error, Result};

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Download a data set's four IDX files, verify each against its pinned SHA-256, write them atomically.
    Fetch(FetchArgs),
}

#[derive(Args, Debug)]
struct FetchArgs {
    /// mnist or fashion-mnist.
    name: String,
    /// Where to put the files [default: $DPGAN_DATA/NAME, else ~/.cache/dpgan/data/NAME].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Base URL to download from instead of the data set's usual mirror.
    #[arg(long, value_name = "URL")]
    mirror: Option<String>,
}

pub fn run(args: &DataArgs) -> Result<()> {
    match &args.command {
        DataCommand::Fetch(a) => fetch_cmd(a),
    }
}

fn fetch_cmd(args: &FetchArgs) -> Result<()> {
    let set = known(&args.name)
        .ok_or_else(|| Error::Invalid(format!("no data set named {:?}: dpgan fetches mnist and fashion-mnist", args.name)))?;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => default_data_root()
            .ok_or_else(|| Error::Invalid("no place for the data: give --dir DIR, or set DPGAN_DATA or HOME".into()))?
            .join(set.name),
    };
    let fetched = fetch(set, &dir, args.mirror.as_deref(), |what| eprintln!("{what}"))?;
    let mut report = String::new();
    for f in fetched {
        match f {
            Fetched::Downloaded(path) => report += &format!("downloaded and verified {}\n", path.display()),
            Fetched::AlreadyThere(path) => report += &format!("already there and verified {}\n", path.display()),
        }
    }
    report += &format!("use it with --data {}\n", dir.display());
    super::emit(&report)
}
