//! `chorusctl invites …`: the invite codes that nodes started with
//! `--registration invite` ask for, over the admin service (feature level 6).

use clap::Subcommand;
use proto::v1::{CreateInviteRequest, Empty, Invite, RevokeInviteRequest};
use serde_json::json;

use crate::admin::{at_leader, request};
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum InvitesCommand {
    /// Make a new invite code and print it (it is shown only this once).
    Create {
        /// Registrations the code allows.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        uses: u32,
        /// How long the code works, e.g. 90s, 30m, 12h, 7d; forever if not given.
        #[arg(long, value_parser = parse_lasting)]
        expires: Option<u64>,
        /// A reminder of whom the code is for, shown by `invites list`.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// The invite codes still good for a registration, by id.
    List,
    /// Withdraw an invite code, by the id `invites list` shows, or by the code.
    Revoke { id: String },
}

/// Seconds in `90s`, `30m`, `12h` or `7d` (at least one second).
fn parse_lasting(s: &str) -> Result<u64, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 12h or 7d"))?;
    let scale = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit is s, m, h or d")),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("a code must work for at least a second".into()),
        Some(secs) => Ok(secs),
        None => Err(format!("{s:?} is too long")),
    }
}

/// `ms` (since the epoch; 0 for never) as a UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
fn time(ms: u64) -> String {
    if ms == 0 {
        return "never".into();
    }
    match time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) {
        Ok(t) => format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second()),
        Err(_) => format!("{ms} ms"),
    }
}

fn row_json(i: &Invite) -> serde_json::Value {
    json!({
        "id": i.id,
        "uses_left": i.uses_left,
        "expires_at_ms": (i.expires_at_ms > 0).then_some(i.expires_at_ms),
        "issued_ms": i.issued_ms,
        "note": i.note,
    })
}

pub async fn run(cli: &Cli, cmd: &InvitesCommand) -> anyhow::Result<()> {
    let t = cli.timeout();
    match cmd {
        InvitesCommand::Create { uses, expires, note } => {
            let create = CreateInviteRequest { uses: *uses, expires_in_secs: expires.unwrap_or(0), note: note.clone() };
            let reply = at_leader(cli, &cli.node, |mut c| {
                let create = create.clone();
                async move { c.create_invite(request(cli, create, t)).await }
            })
            .await?
            .into_inner();
            let invite = reply.invite.unwrap_or_default();
            if cli.json {
                let mut row = row_json(&invite);
                row["code"] = json!(reply.code);
                println!("{row}");
            } else {
                println!("{}", reply.code);
                eprintln!("invite {}: {} registration(s), expires {}", invite.id, invite.uses_left, time(invite.expires_at_ms));
            }
        }
        InvitesCommand::List => {
            let list = at_leader(cli, &cli.node, |mut c| async move { c.list_invites(request(cli, Empty {}, t)).await }).await?.into_inner();
            if cli.json {
                println!("{}", json!(list.invites.iter().map(row_json).collect::<Vec<_>>()));
            } else {
                println!("{:<12}  {:>9}  {:<20}  note", "id", "uses_left", "expires");
                for i in &list.invites {
                    println!("{:<12}  {:>9}  {:<20}  {}", i.id, i.uses_left, time(i.expires_at_ms), i.note);
                }
            }
        }
        InvitesCommand::Revoke { id } => {
            let revoke = RevokeInviteRequest { id: id.clone() };
            at_leader(cli, &cli.node, |mut c| {
                let revoke = revoke.clone();
                async move { c.revoke_invite(request(cli, revoke, t)).await }
            })
            .await?;
            if cli.json {
                println!("{}", json!({ "revoked": id }));
            } else {
                println!("invite {id} revoked");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(parse_lasting("90s"), Ok(90));
        assert_eq!(parse_lasting("90"), Ok(90));
        assert_eq!(parse_lasting("30m"), Ok(1800));
        assert_eq!(parse_lasting("12h"), Ok(43_200));
        assert_eq!(parse_lasting("7d"), Ok(604_800));
        for bad in ["", "d", "7w", "0s", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_lasting(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(time(0), "never");
        assert_eq!(time(1_796_601_600_000), "2026-12-07T00:00:00Z");
        assert_eq!(time(951_782_400_000 + 3_723_000), "2000-02-29T01:02:03Z");
    }
}
