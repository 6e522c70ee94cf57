//! Resource accounting (scheduler rule 1): CPUs, GPU devices and custom resources, with the
//! one place where a total is clamped. Sees neither tasks nor workers, only their options.

use std::collections::{BTreeMap, HashMap};

use crate::Error;
use crate::config::Config;
use crate::protocol::TaskOpts;

use super::gpus::Gpus;

/// Slack for sums of fractional amounts: `0.1 + 0.2` CPUs fit in `0.3`.
pub(super) const EPS: f64 = 1e-9;

/// GPUs and custom resources held by a frame from its start until it leaves the stack (scheduler
/// rule 1). Made only by `Resources::acquire`; given back with `Resources::release`.
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    /// GPU devices and the share of each (gpus.rs).
    pub(super) gpus: Vec<(u32, f64)>,
    pub(super) custom: Vec<(String, f64)>,
}

/// The runtime's resource totals and what running frames hold of them (scheduler rule 1).
pub(super) struct Resources {
    cpus_total: f64,
    /// CPUs held by running frames (a blocked frame holds none).
    cpus_used: f64,
    gpus_total: f64,
    /// GPU devices and their free shares.
    gpus: Gpus,
    custom_total: BTreeMap<String, f64>,
    /// Custom resources held by frames, by name.
    custom_used: HashMap<String, f64>,
}

impl Resources {
    pub(super) fn new(cfg: &Config) -> Resources {
        Resources {
            cpus_total: cfg.num_cpus as f64,
            cpus_used: 0.0,
            gpus_total: cfg.num_gpus,
            gpus: Gpus::new(cfg.num_gpus),
            custom_total: cfg.resources.clone(),
            custom_used: HashMap::new(),
        }
    }

    /// Why a task with these options can never run here, if it cannot (scheduler rule 1).
    pub(super) fn never_fits(&self, name: &str, opts: &TaskOpts) -> Option<Error> {
        let over = |resource: &str, requested: f64, total: f64| {
            // Written so that NaN never fits.
            let fits = requested >= 0.0 && requested <= total + EPS;
            (!fits).then(|| Error::Unschedulable {
                task: name.to_string(),
                resource: resource.to_string(),
                requested: requested.to_string(),
                total: total.to_string(),
            })
        };
        over("CPU", opts.num_cpus, self.cpus_total)
            .or_else(|| {
                over("GPU", opts.num_gpus, self.gpus_total).or_else(|| {
                    // Within the total, but more than one GPU comes in whole devices.
                    (!self.gpus.could_fit(opts.num_gpus)).then(|| Error::Unschedulable {
                        task: name.to_string(),
                        resource: "GPU (whole devices)".to_string(),
                        requested: opts.num_gpus.to_string(),
                        total: self.gpus_total.to_string(),
                    })
                })
            })
            .or_else(|| {
                opts.resources
                    .iter()
                    .find_map(|(r, amount)| over(r, *amount, self.custom_total(r)))
            })
    }

    fn custom_total(&self, name: &str) -> f64 {
        self.custom_total.get(name).copied().unwrap_or(0.0)
    }

    /// True if `cpus` more CPUs are free now.
    pub(super) fn fits(&self, cpus: f64) -> bool {
        self.cpus_used + cpus <= self.cpus_total + EPS
    }

    /// The whole CPUs free now, at least one (how many workers a queue could use).
    pub(super) fn free_cpus_at_least_one(&self) -> usize {
        (self.cpus_total - self.cpus_used).max(1.0).ceil() as usize
    }

    /// True if the task's GPUs and custom resources are free now (scheduler rule 1).
    pub(super) fn fits_other(&self, opts: &TaskOpts) -> bool {
        self.gpus.pick(opts.num_gpus).is_some()
            && opts.resources.iter().all(|(r, amount)| {
                let used = self.custom_used.get(r).copied().unwrap_or(0.0);
                used + amount <= self.custom_total(r) + EPS
            })
    }

    /// A frame starts running (or resumes) with `cpus`.
    pub(super) fn take_cpus(&mut self, cpus: f64) {
        self.cpus_used += cpus;
    }

    /// A frame stops running (blocked, done, or lost) and gives its `cpus` back. The one place
    /// where rounding is clamped; a real drift is a bug, caught in debug builds.
    pub(super) fn give_cpus(&mut self, cpus: f64) {
        self.cpus_used -= cpus;
        debug_assert!(
            self.cpus_used > -1e-6,
            "CPU accounting drift: {} CPUs held after giving {cpus} back",
            self.cpus_used
        );
        if self.cpus_used < EPS {
            self.cpus_used = 0.0;
        }
    }

    /// Takes the task's GPUs and custom resources: GPUs that fit if any (a pool task starts
    /// only when they fit, `fits_other`; an actor takes what is free).
    pub(super) fn acquire(&mut self, opts: &TaskOpts) -> Held {
        let held = Held {
            gpus: self.gpus.pick(opts.num_gpus).unwrap_or_default(),
            custom: opts.resources.clone(),
        };
        self.gpus.take(&held.gpus);
        for (r, amount) in &held.custom {
            *self.custom_used.entry(r.clone()).or_insert(0.0) += amount;
        }
        held
    }

    /// Gives back what `acquire` took.
    pub(super) fn release(&mut self, h: &Held) {
        self.gpus.give_back(&h.gpus);
        for (r, amount) in &h.custom {
            if let Some(used) = self.custom_used.get_mut(r) {
                *used -= amount;
                if *used < EPS {
                    self.custom_used.remove(r);
                }
            }
        }
    }
}
