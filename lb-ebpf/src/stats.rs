//! Counters: every verdict by reason, and per-frontend traffic.

use lb_common::verdict::{Path, Reason};

use crate::maps::{LB_FE_STATS, LB_PATHS, LB_VERDICTS};

/// Counts one packet of `len` bytes under `reason`.
#[inline(always)]
pub fn count_verdict(reason: Reason, len: u64) {
    if let Some(c) = LB_VERDICTS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

/// Counts one packet of `len` bytes to frontend `id`, and a new flow if `new_flow`.
#[inline(always)]
pub fn count_frontend(id: u32, len: u64, new_flow: bool) {
    if let Some(c) = LB_FE_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            if new_flow {
                (*c).new_flows += 1;
            }
        }
    }
}

/// Counts one packet of `len` bytes leaving by `path`.
#[inline(always)]
pub fn count_path(path: Path, len: u64) {
    if let Some(c) = LB_PATHS.get_ptr_mut(path as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}
