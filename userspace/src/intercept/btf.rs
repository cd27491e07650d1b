//! Reads struct member offsets and tracepoint signatures from the running
//! kernel's BTF (/sys/kernel/btf/vmlinux).
//!
//! The kernel programs are written in Rust, which has no CO-RE relocations,
//! so the few kernel struct fields they read (`task_struct.tgid`, the exec'd
//! file's inode, …) are located here at start-up and patched into the
//! object's globals. A kernel without BTF cannot run blastgate (tp_btf
//! programs need it anyway), so failures here are fatal with a clear error.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("BTF is truncated or malformed ({0})")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("BTF member {0}.{1} is a bitfield")]
    Bitfield(String, String),
}

const MAGIC: u16 = 0xeb9f;

mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const TYPEDEF: u32 = 8;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const ENUM64: u32 = 19;
}

struct Type {
    kind: u32,
    kind_flag: bool,
    vlen: u32,
    /// size for structs, referenced type for typedef/ptr/func_proto.
    size_or_type: u32,
    /// Byte offset of the kind-specific trailer in the type section.
    trailer: usize,
}

/// A parsed BTF blob, indexed by type id.
pub struct Btf {
    types: Vec<Type>,
    type_data: Vec<u8>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(BtfError::Malformed("short read"))
}

impl Btf {
    pub fn from_sys_fs() -> Result<Btf, crate::Error> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| {
            crate::Error::Kernel(format!(
                "cannot read /sys/kernel/btf/vmlinux ({e}): blastgate needs a kernel built with \
                 CONFIG_DEBUG_INFO_BTF"
            ))
        })?;
        Btf::parse(&data).map_err(|e| crate::Error::Kernel(format!("kernel BTF: {e}")))
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let magic = data
            .get(0..2)
            .map(|m| u16::from_le_bytes([m[0], m[1]]))
            .ok_or(BtfError::Malformed("no header"))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (big-endian BTF is not supported)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let type_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?
            .to_vec();
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut btf = Btf {
            // Type id 0 is void.
            types: vec![Type {
                kind: 0,
                kind_flag: false,
                vlen: 0,
                size_or_type: 0,
                trailer: 0,
            }],
            type_data,
            strings,
            by_name: HashMap::new(),
        };
        let mut off = 0;
        while off < btf.type_data.len() {
            let name_off = u32_at(&btf.type_data, off)?;
            let info = u32_at(&btf.type_data, off + 4)?;
            let size_or_type = u32_at(&btf.type_data, off + 8)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let trailer = off + 12;
            let extra = match kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen as usize,
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen as usize,
                _ => 0,
            };
            let id = btf.types.len() as u32;
            let name = btf.string(name_off).to_string();
            if !name.is_empty() {
                btf.by_name.entry((name, kind)).or_insert(id);
            }
            btf.types.push(Type {
                kind,
                kind_flag: info >> 31 == 1,
                vlen,
                size_or_type,
                trailer,
            });
            off = trailer + extra;
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let start = off as usize;
        let Some(rest) = self.strings.get(start..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of `member` in `struct name`, looking through anonymous
    /// nested structs and unions.
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(&(name.to_string(), kind::STRUCT))
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))?;
        match self.find_member(id, member, 0)? {
            Some(bits) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::Bitfield(name.into(), member.into())),
            None => Err(BtfError::NoMember(name.into(), member.into())),
        }
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Result<Option<u32>, BtfError> {
        let t = self
            .types
            .get(id as usize)
            .ok_or(BtfError::Malformed("dangling type id"))?;
        if depth > 8 || !(t.kind == kind::STRUCT || t.kind == kind::UNION) {
            return Ok(None);
        }
        for i in 0..t.vlen as usize {
            let m = t.trailer + 12 * i;
            let m_name = u32_at(&self.type_data, m)?;
            let m_type = u32_at(&self.type_data, m + 4)?;
            let m_off = u32_at(&self.type_data, m + 8)?;
            let bit_off = if t.kind_flag {
                m_off & 0xff_ffff
            } else {
                m_off
            };
            let n = self.string(m_name);
            if n == member {
                return Ok(Some(bit_off));
            }
            if n.is_empty() {
                if let Some(inner) =
                    self.find_member(self.skip_modifiers(m_type), member, depth + 1)?
                {
                    return Ok(Some(bit_off + inner));
                }
            }
        }
        Ok(None)
    }

    fn skip_modifiers(&self, mut id: u32) -> u32 {
        // typedef, volatile, const, restrict, type_tag
        for _ in 0..16 {
            match self.types.get(id as usize) {
                Some(t) if matches!(t.kind, 8..=11 | 18) => id = t.size_or_type,
                _ => break,
            }
        }
        id
    }

    /// Number of arguments a BTF-enabled tracepoint passes to its programs,
    /// from the `btf_trace_<name>` typedef (minus the leading `void *`).
    pub fn tracepoint_args(&self, tracepoint: &str) -> Option<u32> {
        let id = *self
            .by_name
            .get(&(format!("btf_trace_{tracepoint}"), kind::TYPEDEF))?;
        let ptr = self
            .types
            .get(self.types.get(id as usize)?.size_or_type as usize)?;
        if ptr.kind != kind::PTR {
            return None;
        }
        let proto = self.types.get(ptr.size_or_type as usize)?;
        (proto.kind == kind::FUNC_PROTO).then(|| proto.vlen.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-assembled BTF blob: `struct s { int a; union { int b; int c; }; }`.
    fn fixture() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0c\0".to_vec();
        let mut types = Vec::new();
        let w = |v: &mut Vec<u8>, x: u32| v.extend_from_slice(&x.to_le_bytes());
        // [1] int: name "int"(1), kind INT, size 4, encoding
        w(&mut types, 1);
        w(&mut types, kind::INT << 24);
        w(&mut types, 4);
        w(&mut types, 32);
        // [2] anonymous union { b @0, c @0 }
        w(&mut types, 0);
        w(&mut types, (kind::UNION << 24) | 2);
        w(&mut types, 4);
        for name in [9u32, 11] {
            w(&mut types, name);
            w(&mut types, 1);
            w(&mut types, 0);
        }
        // [3] struct s { a @0, <anon> @32 bits }
        w(&mut types, 5);
        w(&mut types, (kind::STRUCT << 24) | 2);
        w(&mut types, 8);
        w(&mut types, 7);
        w(&mut types, 1);
        w(&mut types, 0);
        w(&mut types, 0);
        w(&mut types, 2);
        w(&mut types, 32);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(1);
        out.push(0);
        w(&mut out, 24);
        w(&mut out, 0);
        w(&mut out, types.len() as u32);
        w(&mut out, types.len() as u32);
        w(&mut out, strings.len() as u32);
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&fixture()).unwrap();
        assert_eq!(btf.member_offset("s", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("s", "c").unwrap(), 4);
        assert!(matches!(
            btf.member_offset("s", "zz"),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.member_offset("t", "a"),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let data = fixture();
        for len in 0..data.len() {
            let _ = Btf::parse(&data[..len]);
        }
    }

    #[test]
    fn reads_the_running_kernel() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            crate::testing::skip("no /sys/kernel/btf/vmlinux");
            return;
        };
        let btf = Btf::parse(&data).unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4);
        assert!(btf.tracepoint_args("sched_process_fork").unwrap() >= 2);
    }
}
