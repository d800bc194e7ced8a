//! Where the desired state comes from: a directory of policy files, or the Kubernetes API
//! server. The enforcer asks when something may have changed (a wake-up, or its periodic
//! check) and applies what it gets.

use std::{path::PathBuf, time::Instant};

use crate::{
    kubernetes,
    policy::{self, documents::ParseCache, model::PolicySet},
    watch as dir_watch,
};

pub enum Source {
    Files(Files),
    Kubernetes(kubernetes::View),
}

/// A policy directory, and what of it was last read.
pub struct Files {
    dir: PathBuf,
    /// Fingerprint of the files last read, whether they were applied or rejected.
    fingerprint: Option<u64>,
    /// The documents last read, parsed: a change parses only what it touched.
    cache: ParseCache,
}

impl Source {
    pub fn files(dir: PathBuf) -> Source {
        Source::Files(Files {
            dir,
            fingerprint: None,
            cache: ParseCache::default(),
        })
    }

    /// The desired state if it changed since it was last given (the first call always
    /// gives it): the set, or the errors for which the policy in force stays.
    pub fn changed(&mut self) -> Option<Result<PolicySet, String>> {
        match self {
            Source::Files(f) => f.changed(),
            Source::Kubernetes(view) => view.changed(),
        }
    }
}

impl Files {
    fn changed(&mut self) -> Option<Result<PolicySet, String>> {
        // Taken before reading: a change while reading is seen at the next call.
        let fingerprint = dir_watch::fingerprint(&self.dir);
        if self.fingerprint == Some(fingerprint) {
            return None;
        }
        self.fingerprint = Some(fingerprint);
        let started = Instant::now();
        let parsed_before = self.cache.parsed;
        let result = policy::parse::load_dir(&self.dir, &mut self.cache).map_err(|e| e.to_string());
        log::debug!(
            "{} read in {:?} ({} changed documents parsed)",
            self.dir.display(),
            started.elapsed(),
            self.cache.parsed - parsed_before
        );
        Some(result)
    }
}
