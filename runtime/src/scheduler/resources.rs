//! Resource accounting (scheduler rule 1): CPUs, GPU devices and custom resources, with the
//! one place where a total is clamped. Sees neither tasks nor workers, only their options.

use crate::Error;
use crate::protocol::TaskOpts;

use super::Scheduler;

/// GPUs and custom resources of a task (rule 1).
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    /// GPU devices and the share of each (gpus.rs).
    pub(super) gpus: Vec<(u32, f64)>,
    pub(super) custom: Vec<(String, f64)>,
}

pub(super) const EPS: f64 = 1e-9;

impl Scheduler {
    /// Why a task with these options can never run here, if it cannot (rule 1).
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
        over("CPU", opts.num_cpus, self.cfg.num_cpus as f64)
            .or_else(|| {
                over("GPU", opts.num_gpus, self.cfg.num_gpus).or_else(|| {
                    // Within the total, but more than one GPU comes in whole devices.
                    (!self.gpus.could_fit(opts.num_gpus)).then(|| Error::Unschedulable {
                        task: name.to_string(),
                        resource: "GPU (whole devices)".to_string(),
                        requested: opts.num_gpus.to_string(),
                        total: self.cfg.num_gpus.to_string(),
                    })
                })
            })
            .or_else(|| {
                opts.resources.iter().find_map(|(r, amount)| {
                    let total = self.cfg.resources.get(r).copied().unwrap_or(0.0);
                    over(r, *amount, total)
                })
            })
    }

    /// True if the task's GPUs and custom resources are free now (rule 1).
    pub(super) fn fits_other(&self, opts: &TaskOpts) -> bool {
        self.gpus.pick(opts.num_gpus).is_some()
            && opts.resources.iter().all(|(r, amount)| {
                let used = self.custom_used.get(r).copied().unwrap_or(0.0);
                let total = self.cfg.resources.get(r).copied().unwrap_or(0.0);
                used + amount <= total + EPS
            })
    }

    pub(super) fn fits(&self, cpus: f64) -> bool {
        self.cpus_used + cpus <= self.cfg.num_cpus as f64 + EPS
    }

    pub(super) fn acquire_other(&mut self, h: &Held) {
        self.gpus.take(&h.gpus);
        for (r, amount) in &h.custom {
            *self.custom_used.entry(r.clone()).or_insert(0.0) += amount;
        }
    }

    pub(super) fn release_other(&mut self, h: &Held) {
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
