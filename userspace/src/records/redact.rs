//! Placeholder until the streaming redactor lands.
use crate::policy::masking::MaskPlan;

pub struct Redactor {
    plan: MaskPlan,
    masked: u64,
}

impl Redactor {
    pub fn new(plan: MaskPlan) -> Self {
        Redactor { plan, masked: 0 }
    }
    pub fn push(&mut self, offset_us: u64, data: &[u8]) -> Vec<(u64, String)> {
        let (t, n) = self.plan.scan(&String::from_utf8_lossy(data));
        self.masked += n;
        vec![(offset_us, t)]
    }
    pub fn finish(&mut self) -> Vec<(u64, String)> {
        Vec::new()
    }
    pub fn masked(&self) -> u64 {
        self.masked
    }
}
