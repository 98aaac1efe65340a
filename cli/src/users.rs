//! `chorusctl users …`: the credentials of the cluster's users, over the admin
//! service at the leader (feature level 3).

use clap::Subcommand;
use proto::v1::{RevokeRequest, RotateKeyRequest};
use serde_json::json;

use crate::admin::{at_leader, request};
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Sign new session tokens with a fresh key. Tokens signed by the old key
    /// stay good until they expire (at most 7 days), unless --drop-old.
    RotateKey {
        /// Refuse every token signed by an older key at once: every user logs
        /// in again (for a key that leaked).
        #[arg(long)]
        drop_old: bool,
    },
    /// Refuse every session token of USER issued before now, on every node.
    Revoke { user: String },
}

pub async fn run(cli: &Cli, cmd: &UsersCommand) -> anyhow::Result<()> {
    let t = cli.timeout();
    match cmd {
        UsersCommand::RotateKey { drop_old } => {
            let rotate = RotateKeyRequest { drop_old: *drop_old };
            let reply = at_leader(cli, &cli.node, |mut c| {
                async move { c.rotate_key(request(cli, rotate, t)).await }
            })
            .await?
            .into_inner();
            if cli.json {
                println!("{}", json!({ "key_version": reply.version, "dropped_old": drop_old }));
            } else if *drop_old {
                println!("signing key rotated to version {}; tokens of older keys are refused", reply.version);
            } else {
                println!("signing key rotated to version {}; tokens of older keys stay good until they expire", reply.version);
            }
        }
        UsersCommand::Revoke { user } => {
            let revoke = RevokeRequest { user: user.clone() };
            let reply = at_leader(cli, &cli.node, |mut c| {
                let revoke = revoke.clone();
                async move { c.revoke(request(cli, revoke, t)).await }
            })
            .await?
            .into_inner();
            if cli.json {
                println!("{}", json!({ "user": user, "session_epoch": reply.epoch }));
            } else {
                println!("every session of {user} issued before now is revoked");
            }
        }
    }
    Ok(())
}
