//! Any bytes as a sequence of commands (decoded as the log stores them) applied to a small
//! cluster: `State::apply` never panics, a refused command changes nothing, and the state's
//! invariants hold after every command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qm_core::{Command, State};
use qm_proto::build::{gpu_inventory, gpu_team};
use qm_proto::convert::{inventory_from, team_from};

const MODEL: &str = "nvidia-h100-80gb-hbm3";

fn cluster() -> State {
    let mut s = State::new();
    for team in ["a", "b"] {
        let team = team_from(&gpu_team(team, MODEL, 8)).expect("a valid team");
        s.apply(Command::SetTeam { team }).expect("a team");
    }
    for node in ["n0", "n1"] {
        let node = inventory_from(&gpu_inventory(node, 8, MODEL)).expect("a valid node");
        s.apply(Command::RegisterNode { node, at_ms: 0 }).expect("a node");
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(commands) = postcard::from_bytes::<Vec<Command>>(data) else { return };
    let mut s = cluster();
    for c in commands {
        let before = s.hash();
        if s.apply(c).is_err() {
            assert_eq!(s.hash(), before, "a refused command changed the state");
        }
        s.check_invariants().expect("the invariants hold");
    }
});
