//! `flotilla acl bootstrap` and `flotilla token create|list|revoke`: the
//! tokens of a secure cluster.

use clap::Subcommand;
use flotilla_api::{Client, CreateTokenRequest, TokenInfo};
use flotilla_security::TokenRole;

use crate::output::{Format, print_json, table};

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Make the management token (role admin), once in a cluster's life, and print it.
    Bootstrap,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (shown this once).
    Create {
        /// admin, deploy or read for the API; agent or server to join.
        #[arg(long, value_parser = role)]
        role: TokenRole,
        /// What the token is for, shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime in seconds; none: until revoked.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Format,
    },
    /// Revoke a token by the id `token list` shows; every server refuses it from then on.
    Revoke { id: String },
}

fn role(text: &str) -> Result<TokenRole, String> {
    text.parse().map_err(|e: flotilla_security::SecurityError| e.to_string())
}

pub async fn acl(client: &Client, command: AclCommand) -> anyhow::Result<()> {
    match command {
        AclCommand::Bootstrap => {
            let answer = client.bootstrap_acl().await?;
            eprintln!(
                "management token {} (role admin); keep it secret, it is shown once:",
                answer.token.info.id
            );
            println!("{}", answer.token.token);
            Ok(())
        }
    }
}

fn expiry(info: &TokenInfo) -> String {
    match info.expires_ms {
        None => "never".to_owned(),
        Some(at) => {
            let left = at.saturating_sub(flotilla_api::now_ms()) / 1000;
            if left == 0 { "expired".to_owned() } else { format!("in {left}s") }
        }
    }
}

pub async fn token(client: &Client, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { role, description, ttl } => {
            let created =
                client.create_token(&CreateTokenRequest { role, description, ttl_secs: ttl }).await?;
            eprintln!(
                "token {} (role {}, expires {}); shown once:",
                created.info.id,
                created.info.role,
                expiry(&created.info)
            );
            println!("{}", created.token);
            Ok(())
        }
        TokenCommand::List { output } => {
            let tokens = client.tokens().await?;
            if output == Format::Json {
                return print_json(&tokens);
            }
            let mut t = table(&["ID", "ROLE", "EXPIRES", "DESCRIPTION"]);
            for info in &tokens {
                t.add_row(vec![
                    info.id.clone(),
                    info.role.to_string(),
                    expiry(info),
                    info.description.clone(),
                ]);
            }
            println!("{t}");
            Ok(())
        }
        TokenCommand::Revoke { id } => {
            let info = client.revoke_token(&id).await?;
            println!("token {} (role {}) revoked", info.id, info.role);
            Ok(())
        }
    }
}
