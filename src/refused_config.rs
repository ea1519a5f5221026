//! What hapmaster refuses in a configuration before any worker runs it (at start, by `-c`, at
//! each reload): the `master-worker` keyword and `program` sections, whichever comes first in
//! the files, read once.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use crate::config_scan::{self, Found};
use crate::{master_worker_keyword, program_section};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    MasterWorker(Found),
    Program(Found),
}

impl Refused {
    pub fn found(&self) -> &Found {
        match self {
            Refused::MasterWorker(f) | Refused::Program(f) => f,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&match self {
            Refused::MasterWorker(found) => master_worker_keyword::refusal(found),
            Refused::Program(found) => program_section::refusal(found),
        })
    }
}

impl std::error::Error for Refused {}

/// The first refused line in what haproxy reads for these `-f` arguments.
pub fn find(args: &[OsString], change_dir: Option<&Path>) -> Option<Refused> {
    type Make = fn(Found) -> Refused;
    let (make, found) = config_scan::find(args, change_dir, |line| {
        if master_worker_keyword::is_keyword(line) {
            Some(Refused::MasterWorker as Make)
        } else if program_section::is_section(line) {
            Some(Refused::Program as Make)
        } else {
            None
        }
    })?;
    Some(make(found))
}
