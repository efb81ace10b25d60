//! The real binary in processes of its own: its commands and exit codes, signals and `kill -9`,
//! and hostile connections by the thousand (this binary raises its own open-files limit for them).

mod archive;
mod commands;
mod connections;
mod crash;
