//! The streaming JSON masker (`MaskPlan::mask_json_bytes`, what HTTP JSON
//! responses are masked with) against the tree walk it replaced
//! (`policy::masking::tree`, built with the `json-mask-reference`
//! feature).
//!
//! Input: `[rules, bytes…]`. `rules` picks one of the reference rule sets
//! (`tree::RULE_SETS`, then the shipped `masking.toml` on a target its
//! field rule names and on one it does not); the bytes are the body. Both
//! must read the same bodies as JSON; what the streaming masker sends must
//! be JSON that reads back as the tree's masked document, with the same
//! count (more only where an object repeats a key: every occurrence is
//! masked); a body with nothing masked goes out as it came.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use blastgate::policy::masking::{tree, MaskPlan};
use libfuzzer_sys::fuzz_target;

fn plans() -> &'static [MaskPlan] {
    static PLANS: OnceLock<Vec<MaskPlan>> = OnceLock::new();
    PLANS.get_or_init(tree::reference_plans)
}

fuzz_target!(init: common::init(), |data: &[u8]| {
    common::run(|| {
        let [rules, body @ ..] = data else {
            return;
        };
        let plans = plans();
        let plan = &plans[usize::from(*rules) % plans.len()];
        if let Err(e) = tree::differential(plan, body) {
            panic!("{e}");
        }
    })
});
