//! `qm admin tokens`: create a token (its secret is printed once, or written to a 0600 file),
//! list them, revoke one, and show which one a command sends.

use super::connect::{call, call_with, Resend};
use super::words::{ago, table};
use super::{admin_client, print_or_json, Target};
use crate::out::say;
use anyhow::Result;
use clap::{ArgGroup, Args, Subcommand};
use qm_proto::v1::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `qm admin tokens`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Creates a token and prints its secret, which is shown this once.
    Create(CreateArgs),
    /// Lists tokens: names, roles and scopes (never secrets).
    List,
    /// Revokes a token: every replica refuses it once the revocation is applied.
    Revoke {
        /// The token's name.
        name: String,
    },
    /// Shows the token this command sends: its name, role and scope.
    Whoami,
}

/// Flags of `qm admin tokens create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("role").required(true).args(["admin", "team", "agent"])))]
pub struct CreateArgs {
    /// Its name, unique: 1 to 64 of letters, digits, '.', '_' and '-'.
    name: String,
    /// An admin token: everything.
    #[arg(long)]
    admin: bool,
    /// A member token of this team (repeat for several): submits, cancels and lists its
    /// teams' jobs, reads cluster-wide views.
    #[arg(long = "team", value_name = "TEAM")]
    team: Vec<String>,
    /// An agent token for this node: runs that node's agent session only.
    #[arg(long, value_name = "NODE")]
    agent: Option<String>,
    /// Write the secret to this file (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

impl CreateArgs {
    fn request(&self) -> CreateTokenRequest {
        let role = match (self.admin, &self.agent) {
            (true, _) => Role::Admin,
            (false, Some(_)) => Role::Agent,
            (false, None) => Role::Member,
        };
        CreateTokenRequest {
            name: self.name.clone(),
            role: role as i32,
            teams: self.team.clone(),
            node: self.agent.clone().unwrap_or_default(),
        }
    }
}

/// Runs `qm admin tokens ...`.
pub async fn tokens(t: &Target, cmd: &TokensCommand) -> Result<()> {
    match cmd {
        TokensCommand::Create(args) => create(t, args).await,
        TokensCommand::List => {
            let r = call(t, |c| async move { admin_client(c).list_tokens(ListTokensRequest {}).await }).await?;
            let now = super::words::now_ms();
            let rows = r
                .tokens
                .iter()
                .map(|k| vec![k.name.clone(), role(k), scope(k), ago(now, k.created_ms), by(k).to_owned()]);
            let json = json!({ "tokens": r.tokens.iter().map(token_json).collect::<Vec<_>>() });
            print_or_json(t, json, || table(&["NAME", "ROLE", "SCOPE", "CREATED", "BY"], &[], rows));
            Ok(())
        }
        TokensCommand::Revoke { name } => {
            let req = RevokeTokenRequest { name: name.clone() };
            call(t, |c| {
                let req = req.clone();
                async move { admin_client(c).revoke_token(req).await }
            })
            .await?;
            print_or_json(t, json!({ "revoked": name }), || format!("revoked token {name}"));
            Ok(())
        }
        TokensCommand::Whoami => {
            let k = call(t, |c| async move { admin_client(c).who_am_i(WhoAmIRequest {}).await }).await?;
            print_or_json(t, token_json(&k), || format!("{} ({}{})", k.name, role(&k), with_scope(&k)));
            Ok(())
        }
    }
}

async fn create(t: &Target, args: &CreateArgs) -> Result<()> {
    let r = create_token(t, args.request()).await?;
    let token = r.token.unwrap_or_default();
    match &args.out {
        Some(out) => {
            super::admin::write_private(out, format!("{}\n", r.secret).as_bytes())?;
            let json = json!({ "token": token_json(&token), "file": out });
            print_or_json(t, json, || format!("token {} written to {} (mode 0600)", token.name, out.display()));
        }
        None if t.json => say!("{}", json!({ "token": token_json(&token), "secret": r.secret })),
        None => {
            eprintln!(
                "qm: token {} ({}{}); its secret, shown this once:",
                token.name,
                role(&token),
                with_scope(&token)
            );
            say!("{}", r.secret);
        }
    }
    Ok(())
}

/// Asks for a token; not sent twice (a second would be refused, the name taken).
async fn create_token(t: &Target, req: CreateTokenRequest) -> Result<CreateTokenResponse> {
    call_with(t, Resend::Never, |c| {
        let req = req.clone();
        async move { admin_client(c).create_token(req).await }
    })
    .await
}

fn role(k: &TokenInfo) -> String {
    super::words::role(k.role)
}

fn scope(k: &TokenInfo) -> String {
    match Role::try_from(k.role) {
        Ok(Role::Member) => format!("teams {}", k.teams.join(",")),
        Ok(Role::Agent) => format!("node {}", k.node),
        _ => "-".into(),
    }
}

fn with_scope(k: &TokenInfo) -> String {
    match scope(k).as_str() {
        "-" => String::new(),
        s => format!(", {s}"),
    }
}

fn by(k: &TokenInfo) -> &str {
    if k.created_by.is_empty() {
        "-"
    } else {
        &k.created_by
    }
}

fn token_json(k: &TokenInfo) -> serde_json::Value {
    json!({
        "name": k.name,
        "role": role(k),
        "teams": k.teams,
        "node": k.node,
        "created_ms": k.created_ms,
        "created_by": k.created_by,
    })
}

/// Waits until the token in `file` is accepted (a new cluster writes it before its bootstrap
/// commits), for up to `patience`.
pub async fn wait_for_token(t: &Target, file: &Path, patience: Duration) -> Result<()> {
    let until = Instant::now() + patience;
    loop {
        let tried = match file.exists() {
            true => call(t, |c| async move { admin_client(c).who_am_i(WhoAmIRequest {}).await }).await.map(drop),
            false => Err(anyhow::anyhow!("{} was not written", file.display())),
        };
        match tried {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= until => return Err(e.context("waiting for the bootstrap admin token")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Creates an agent token named `agent-NODE` for `node` and returns its secret.
pub async fn agent_token(t: &Target, node: &str) -> Result<String> {
    let req = CreateTokenRequest {
        name: format!("agent-{node}"),
        role: Role::Agent as i32,
        teams: vec![],
        node: node.to_owned(),
    };
    Ok(create_token(t, req).await?.secret)
}
