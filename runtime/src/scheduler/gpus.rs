//! GPU devices: which device ids a task gets, and how much of each is taken.
//!
//! Owns the per-device bookkeeping of scheduler rule 1 (README.md) and nothing else: no I/O, no
//! knowledge of tasks. The scheduler asks `pick` when a task could start, `take`s the shares it
//! starts with and `give_back`s them when the frame leaves its worker's stack.
//!
//! A runtime declared with `num_gpus = g` has `ceil(g)` devices, numbered from 0; each holds
//! one GPU, the last one `g - floor(g)` if `g` is not whole. A request below one GPU takes that
//! share of a single device (the one it fits most tightly, so that whole devices stay free for
//! whole requests); a request of one GPU or more takes `ceil(n)` whole free devices, as Ray
//! does (more than one GPU is given in whole devices).

use super::resources::EPS;

/// The GPU devices of a runtime.
#[derive(Debug, Clone)]
pub(super) struct Gpus {
    /// Capacity of each device (1, or less for the last one).
    cap: Vec<f64>,
    /// Free share of each device.
    free: Vec<f64>,
}

impl Gpus {
    /// The devices of a runtime declared with `total` GPUs (finite, not negative).
    pub(crate) fn new(total: f64) -> Gpus {
        let n = if total > EPS {
            total.ceil() as usize
        } else {
            0
        };
        let cap: Vec<f64> = (0..n).map(|i| (total - i as f64).min(1.0)).collect();
        Gpus {
            free: cap.clone(),
            cap,
        }
    }

    /// True if `want` GPUs fit when every device is free.
    pub(crate) fn could_fit(&self, want: f64) -> bool {
        Self::pick_from(&self.cap, want).is_some()
    }

    /// The devices and shares for `want` GPUs among the free ones now, if they fit; empty for
    /// no GPU. A NaN or negative `want` never fits.
    pub(crate) fn pick(&self, want: f64) -> Option<Vec<(u32, f64)>> {
        Self::pick_from(&self.free, want)
    }

    fn pick_from(free: &[f64], want: f64) -> Option<Vec<(u32, f64)>> {
        if want.is_nan() || want < 0.0 {
            return None;
        }
        if want <= EPS {
            return Some(Vec::new());
        }
        if want < 1.0 {
            // Best fit: the device with the least room that still holds the share.
            return free
                .iter()
                .enumerate()
                .filter(|&(_, &f)| f + EPS >= want)
                .min_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| vec![(i as u32, want)]);
        }
        let whole: Vec<(u32, f64)> = free
            .iter()
            .enumerate()
            .filter(|&(_, &f)| f + EPS >= 1.0)
            .map(|(i, _)| (i as u32, 1.0))
            .take(want.ceil() as usize)
            .collect();
        (whole.len() as f64 >= want.ceil()).then_some(whole)
    }

    /// Takes shares returned by `pick`.
    pub(crate) fn take(&mut self, shares: &[(u32, f64)]) {
        for &(i, s) in shares {
            if let Some(f) = self.free.get_mut(i as usize) {
                *f = (*f - s).max(0.0);
            }
        }
    }

    /// Gives back shares taken with `take`.
    pub(crate) fn give_back(&mut self, shares: &[(u32, f64)]) {
        for &(i, s) in shares {
            let i = i as usize;
            if let (Some(f), Some(&c)) = (self.free.get_mut(i), self.cap.get(i)) {
                *f = (*f + s).min(c);
                if c - *f < EPS {
                    *f = c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_requests_get_distinct_whole_devices() {
        let mut g = Gpus::new(2.0);
        let a = g.pick(1.0).unwrap();
        g.take(&a);
        let b = g.pick(1.0).unwrap();
        g.take(&b);
        assert_ne!(a[0].0, b[0].0);
        assert!(g.pick(1.0).is_none());
        assert!(g.pick(0.1).is_none());
        g.give_back(&a);
        assert_eq!(g.pick(1.0).unwrap(), a);
        assert_eq!(g.pick(2.0), None);
        assert!(g.could_fit(2.0));
        assert!(!g.could_fit(3.0));
    }

    #[test]
    fn fractions_share_a_device_and_leave_whole_ones_free() {
        let mut g = Gpus::new(2.0);
        let a = g.pick(0.5).unwrap();
        g.take(&a);
        // The second half goes on the same device (tightest fit): device 1 stays whole.
        let b = g.pick(0.5).unwrap();
        g.take(&b);
        assert_eq!(a[0].0, b[0].0);
        let c = g.pick(1.0).unwrap();
        assert_ne!(c[0].0, a[0].0);
        // Three 0.4 shares never share one device: the third goes to the other one.
        let mut g = Gpus::new(2.0);
        let shares: Vec<_> = (0..3)
            .map(|_| {
                let s = g.pick(0.4).unwrap();
                g.take(&s);
                s[0].0
            })
            .collect();
        assert_eq!(shares[0], shares[1]);
        assert_ne!(shares[1], shares[2]);
        assert!(g.pick(0.4).is_some());
        g.take(&g.pick(0.4).unwrap());
        assert!(g.pick(0.4).is_none(), "0.2 left on each device");
        assert!(g.pick(0.2).is_some());
    }

    #[test]
    fn more_than_one_takes_whole_devices_and_a_partial_last_device_counts_as_its_share() {
        let g = Gpus::new(1.5);
        assert!(g.could_fit(1.0));
        assert!(g.could_fit(0.5));
        assert!(
            !g.could_fit(1.5),
            "needs two whole devices, the second holds 0.5"
        );
        assert!(!g.could_fit(f64::NAN));
        assert!(!g.could_fit(-1.0));
        assert_eq!(g.pick(0.0), Some(Vec::new()));
        assert!(Gpus::new(0.0).could_fit(0.0));
        assert!(!Gpus::new(0.0).could_fit(0.5));
    }
}
