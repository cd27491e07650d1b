//! Placeholder until the sftp observer lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpRecord {
    pub op: &'static str,
    pub path: String,
    pub target: Option<String>,
    pub bytes: u64,
    pub mode: Option<String>,
    pub status: Option<u32>,
}
#[derive(Default)]
pub struct SftpObserver;
impl SftpObserver {
    pub fn new() -> Self {
        SftpObserver
    }
    pub fn client_bytes(&mut self, _data: &[u8]) {}
    pub fn server_bytes(&mut self, _data: &[u8]) -> Vec<SftpRecord> {
        Vec::new()
    }
    pub fn finish(&mut self) -> Vec<SftpRecord> {
        Vec::new()
    }
}
