//! SVG plots of a run (with `plotters`): utilization, queue length and per-team share over
//! time, and the JCT CDF of one or several policies.
