//! Priority classes (`qm priority-class set | list | delete`) and `qm apply`, which sets the
//! priority classes and teams of a teams file (the one `qm plan --teams` reads) on a cluster.

use super::admin::set_team;
use super::connect::call;
use super::words::table;
use super::{admin_client, Target};
use crate::out::{say, Failure};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use qm_core::scenario::TeamsFile;
use qm_proto::convert::team_to;
use qm_proto::v1::*;
use serde_json::json;

/// The classes `qm dev` starts with: a job without a class runs at `default`'s value, 0.
pub const DEFAULT_CLASSES: [(&str, i32); 4] = [("low", -100), ("default", 0), ("high", 100), ("production", 1000)];

/// `qm priority-class`.
#[derive(Debug, Subcommand)]
pub enum ClassCommand {
    /// Creates a priority class or changes its value (jobs already submitted keep theirs).
    Set {
        /// Its name.
        name: String,
        /// Its value: higher runs first and may preempt lower within a team.
        #[arg(allow_negative_numbers = true)]
        value: i32,
    },
    /// Lists the priority classes, highest first.
    List,
    /// Deletes a priority class (jobs already submitted keep their priority).
    Delete {
        /// Its name.
        name: String,
    },
}

/// Flags of `qm apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// A teams file: `[[priority_class]]` and `[[team]]` entries with their quotas (the file
    /// `qm plan --teams` reads, e.g. examples/teams.toml). Its `[policy]` is a replica's
    /// configuration and is not sent.
    #[arg(long, short = 'f')]
    pub file: std::path::PathBuf,
}

/// Sets one priority class.
pub async fn set_class(t: &Target, name: &str, value: i32) -> Result<()> {
    let req = SetPriorityClassRequest { class: Some(PriorityClass { name: name.to_owned(), value }) };
    call(t, |c| {
        let req = req.clone();
        async move { admin_client(c).set_priority_class(req).await }
    })
    .await?;
    Ok(())
}

/// Runs `qm priority-class`.
pub async fn classes(t: &Target, cmd: &ClassCommand) -> Result<()> {
    match cmd {
        ClassCommand::Set { name, value } => {
            set_class(t, name, *value).await?;
            if t.json {
                say!("{}", json!({ "name": name, "value": value }));
            } else {
                say!("priority class {name}: {value}");
            }
        }
        ClassCommand::Delete { name } => {
            let req = DeletePriorityClassRequest { name: name.clone() };
            call(t, |c| {
                let req = req.clone();
                async move { admin_client(c).delete_priority_class(req).await }
            })
            .await?;
            if t.json {
                say!("{}", json!({ "name": name, "deleted": true }));
            } else {
                say!("priority class {name}: deleted");
            }
        }
        ClassCommand::List => {
            let r =
                call(t, |c| async move { admin_client(c).list_priority_classes(ListPriorityClassesRequest {}).await })
                    .await?;
            let mut classes = r.classes;
            classes.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.name.cmp(&b.name)));
            if t.json {
                let rows: Vec<_> = classes.iter().map(|c| json!({ "name": c.name, "value": c.value })).collect();
                say!("{}", json!(rows));
            } else {
                let rows = classes.iter().map(|c| vec![c.name.clone(), c.value.to_string()]);
                say!("{}", table(&["NAME", "VALUE"], &["VALUE"], rows));
            }
        }
    }
    Ok(())
}

/// Runs `qm apply`: every priority class, then every team, of the file.
pub async fn apply(t: &Target, args: &ApplyArgs) -> Result<()> {
    let path = &args.file;
    let text = std::fs::read_to_string(path).with_context(|| format!("--file {}", path.display()))?;
    let file: TeamsFile = toml::from_str(&text).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    let teams = file.teams().map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
    for c in &file.priority_classes {
        set_class(t, &c.name, c.value).await?;
    }
    for team in &teams {
        set_team(t, team_to(team)).await?;
    }
    if t.json {
        say!("{}", json!({ "priority_classes": file.priority_classes.len(), "teams": teams.len() }));
    } else {
        say!("{}: {} priority class(es) and {} team(s) set", path.display(), file.priority_classes.len(), teams.len());
    }
    Ok(())
}
