//! `ganglion log verify|repair`: the operator's tools for a damaged event log, run on
//! the data directory of a stopped server.

use std::path::PathBuf;

use anyhow::{Context, bail};
use ganglion_bus::log::{Finding, Log, LogOptions, Recovery, VerifyReport};
use serde_json::json;

use crate::Output;
use crate::commands::line;
use crate::serve::ConfigArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct LogArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The server's data directory (the event log is its `log/`); by default
    /// `server.data_dir` from the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// How results are printed.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl LogArgs {
    fn log_dir(&self) -> anyhow::Result<PathBuf> {
        let data_dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => {
                let loaded = self
                    .config
                    .loader()
                    .load()
                    .map_err(|problems| anyhow::anyhow!("{problems}"))
                    .context("reading server.data_dir from the configuration")?;
                loaded.config().server.data_dir.clone()
            }
        };
        let dir = data_dir.join("log");
        if !dir.is_dir() {
            bail!(
                "{} holds no event log (is --data-dir right?)",
                dir.display()
            );
        }
        Ok(dir)
    }
}

fn finding_json(f: &Finding) -> serde_json::Value {
    json!({
        "problem": f.problem.to_string(),
        "code": f.problem.code(),
        "refuses_open": f.refuses_open,
        "repair": f.repair,
    })
}

fn print(
    output: Output,
    dir: &std::path::Path,
    report: &VerifyReport,
    done: bool,
) -> anyhow::Result<()> {
    match output {
        Output::Json => line(json!({
            "dir": dir.display().to_string(),
            "segments": report.segments,
            "records": report.records,
            "first_seq": report.first_seq,
            "next_seq": report.next_seq,
            "opens": !report.refuses_open() || done,
            "findings": report.findings.iter().map(finding_json).collect::<Vec<_>>(),
        }))?,
        Output::Table => {
            line(format!(
                "{}: {} segments, {} records, sequences {} to {}",
                dir.display(),
                report.segments,
                report.records,
                report.first_seq,
                report.next_seq.saturating_sub(1)
            ))?;
            for f in &report.findings {
                let kind = match (f.refuses_open, done) {
                    (true, true) => "repaired",
                    (true, false) => "REFUSES OPEN",
                    (false, true) => "mended",
                    (false, false) => "open mends",
                };
                line(format!("{kind:<13} {}", f.problem))?;
                let verb = if done { "did" } else { "would" };
                line(format!("{:<13} repair {verb}: {}", "", f.repair))?;
            }
        }
    }
    Ok(())
}

/// A locked log is one a running server holds: say so.
fn locked_hint(e: ganglion_bus::log::LogError) -> anyhow::Error {
    match e {
        ganglion_bus::log::LogError::Locked { .. } => anyhow::Error::new(e).context(
            "a running `ganglion serve` holds this log: stop it first (the log is read and repaired while nothing writes it)",
        ),
        e => e.into(),
    }
}

/// `ganglion log verify`: every problem, changing nothing; exit 1 if an open would be
/// refused.
pub(crate) fn verify(args: &LogArgs) -> anyhow::Result<()> {
    let dir = args.log_dir()?;
    let report = Log::verify(&dir, LogOptions::default())
        .map_err(locked_hint)
        .with_context(|| format!("verifying {}", dir.display()))?;
    print(args.output, &dir, &report, false)?;
    let refused = report.findings.iter().filter(|f| f.refuses_open).count();
    if refused > 0 {
        bail!(
            "{refused} problem(s) refuse an open of {}; `ganglion log repair --drop-damaged-tail` cuts them (keeping a copy in quarantine/) and continues numbering above every acknowledged sequence",
            dir.display()
        );
    }
    eprintln!("ok: the log opens");
    Ok(())
}

/// `ganglion log repair --drop-damaged-tail`.
pub(crate) fn repair(args: &LogArgs, drop_damaged_tail: bool) -> anyhow::Result<()> {
    if !drop_damaged_tail {
        bail!(
            "a repair drops damaged records for good (a copy goes to quarantine/): say --drop-damaged-tail to go ahead; `ganglion log verify` shows what it would cut"
        );
    }
    let dir = args.log_dir()?;
    let options = LogOptions {
        recovery: Recovery::DropDamagedTail,
        ..LogOptions::default()
    };
    let log = Log::open(&dir, options)
        .map_err(locked_hint)
        .with_context(|| format!("repairing {}", dir.display()))?;
    let stats = log.stats();
    let report = VerifyReport {
        segments: stats.segments,
        records: stats.records,
        first_seq: stats.first_seq,
        next_seq: stats.next_seq,
        findings: log.findings().to_vec(),
    };
    log.close().context("closing the repaired log")?;
    print(args.output, &dir, &report, true)?;
    eprintln!("repaired: the log opens");
    Ok(())
}

/// What to say when the server cannot open a damaged log: how many problems verify finds,
/// and the commands that show and repair them ("" when verify finds nothing to add).
pub(crate) fn damage_hint(data_dir: &std::path::Path) -> String {
    let Ok(report) = Log::verify(data_dir.join("log"), LogOptions::default()) else {
        return String::new();
    };
    let refused = report.findings.iter().filter(|f| f.refuses_open).count();
    if refused == 0 {
        return String::new();
    }
    let dir = data_dir.display();
    format!(
        " ({refused} problem(s) found: `ganglion log verify --data-dir {dir}` lists them; `ganglion log repair --drop-damaged-tail --data-dir {dir}` cuts them, keeping a copy, and continues numbering above every acknowledged sequence)"
    )
}
