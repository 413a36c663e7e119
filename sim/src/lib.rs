//! The discrete-event simulator (`qm sim`): replays traces through `qm_core::schedule` and
//! `qm_core::State::apply` in virtual time.
//!
//! Module map: empty until the simulator issue lands.
