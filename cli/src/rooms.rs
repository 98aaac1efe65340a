//! `chorusctl rooms …`: an operator's say over rooms, over the admin service
//! at the leader (feature level 6).

use clap::Subcommand;
use proto::v1::SetRoomOwnerRequest;
use serde_json::json;

use crate::admin::{at_leader, request};
use crate::Cli;

#[derive(Subcommand, Debug)]
pub enum RoomsCommand {
    /// Make USER, a member of ROOM, its owner: for a room made before feature
    /// level 5 (which has none), or one whose owner has gone. A previous
    /// owner still in the room becomes a moderator.
    SetOwner { room: String, user: String },
}

pub async fn run(cli: &Cli, cmd: &RoomsCommand) -> anyhow::Result<()> {
    let t = cli.timeout();
    match cmd {
        RoomsCommand::SetOwner { room, user } => {
            let set = SetRoomOwnerRequest { room: room.clone(), user: user.clone() };
            at_leader(cli, &cli.node, |mut c| {
                let set = set.clone();
                async move { c.set_room_owner(request(cli, set, t)).await }
            })
            .await?;
            if cli.json {
                println!("{}", json!({ "room": room, "owner": user }));
            } else {
                println!("{user} owns {room}");
            }
        }
    }
    Ok(())
}
