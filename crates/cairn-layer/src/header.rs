//! Tar header blocks and PAX / GNU extended headers: parsing only, no I/O.
//!
//! Helpers return a `&'static str` reason; the reader wraps it in a `LayerError` carrying
//! the entry name and the stream offset, which only it knows.

pub const BLOCK: u64 = 512;

/// Bounds on lengths read from the stream, so a hostile header cannot make us allocate.
pub const MAX_PAX: u64 = 1 << 20;
/// GNU long names: Linux paths are at most 4096 bytes, leave room for odd but valid tars.
pub const MAX_LONG_NAME: u64 = 64 * 1024;
/// Sparse map entries of one file (GNU sparse 1.0).
pub const MAX_SPARSE_SEGMENTS: u64 = 32 * 1024;
/// Extended attributes of one entry.
pub const MAX_XATTRS: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TypeFlag {
    Regular,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    PaxLocal,
    PaxGlobal,
    GnuLongName,
    GnuLongLink,
    GnuOldSparse,
    Other(u8),
}

impl TypeFlag {
    fn from_byte(b: u8) -> TypeFlag {
        match b {
            b'0' | 0 | b'7' => TypeFlag::Regular,
            b'1' => TypeFlag::Hardlink,
            b'2' => TypeFlag::Symlink,
            b'3' => TypeFlag::Char,
            b'4' => TypeFlag::Block,
            b'5' => TypeFlag::Dir,
            b'6' => TypeFlag::Fifo,
            b'x' => TypeFlag::PaxLocal,
            b'g' => TypeFlag::PaxGlobal,
            b'L' => TypeFlag::GnuLongName,
            b'K' => TypeFlag::GnuLongLink,
            b'S' => TypeFlag::GnuOldSparse,
            o => TypeFlag::Other(o),
        }
    }
}

/// The fields of one 512-byte header that the extractor uses.
#[derive(Clone, Debug)]
pub struct Header {
    pub name: Vec<u8>,
    pub linkname: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub flag: TypeFlag,
    pub devmajor: u64,
    pub devminor: u64,
}

pub fn is_zero_block(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&c| c == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// Octal (NUL/space padded) or GNU base-256 (high bit set) numbers.
pub fn parse_numeric(field: &[u8]) -> Result<u64, &'static str> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first == 0xff {
                return Err("negative base-256 number");
            }
            let mut v: u64 = u64::from(first & 0x7f);
            for &b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or("base-256 number overflows 64 bits")?;
            }
            return Ok(v);
        }
    }
    let s = cstr(field);
    let s = trim(s);
    let mut v: u64 = 0;
    for &c in s {
        if !(b'0'..=b'7').contains(&c) {
            return Err("non-octal digit in a numeric field");
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or("octal number overflows 64 bits")?;
    }
    Ok(v)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | 0] = s {
        s = rest;
    }
    s
}

/// Sum of the header bytes with the checksum field taken as spaces, unsigned and signed
/// (old tars summed signed chars; both are accepted, as GNU tar does).
pub fn checksums(b: &[u8; 512]) -> (u64, i64) {
    let mut u: u64 = 0;
    let mut s: i64 = 0;
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        u += u64::from(c);
        s += i64::from(c as i8);
    }
    (u, s)
}

/// Verifies the checksum; `Err((stored, computed))` on mismatch, `stored` being `None`
/// when the field is not even a number.
pub fn verify_checksum(b: &[u8; 512]) -> Result<(), (Option<u64>, u64)> {
    let (u, s) = checksums(b);
    match parse_numeric(&b[148..156]) {
        Ok(stored) if stored == u || i64::try_from(stored).ok() == Some(s) => Ok(()),
        Ok(stored) => Err((Some(stored), u)),
        Err(_) => Err((None, u)),
    }
}

pub fn parse_header(b: &[u8; 512]) -> Result<Header, &'static str> {
    let magic = &b[257..265];
    let is_posix = &magic[..6] == b"ustar\0";
    let mut name = cstr(&b[0..100]).to_vec();
    // Only POSIX ustar has a prefix field; GNU uses those bytes for atime/ctime.
    if is_posix {
        let prefix = cstr(&b[345..500]);
        if !prefix.is_empty() {
            let mut full = prefix.to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    let dev = |r: std::ops::Range<usize>| -> Result<u64, &'static str> {
        if is_posix || &magic[..6] == b"ustar " {
            parse_numeric(&b[r])
        } else {
            Ok(0)
        }
    };
    let mtime = parse_numeric(&b[136..148])?;
    Ok(Header {
        name,
        linkname: cstr(&b[157..257]).to_vec(),
        mode: u32::try_from(parse_numeric(&b[100..108])? & 0o7777).map_err(|_| "mode")?,
        uid: parse_numeric(&b[108..116])?,
        gid: parse_numeric(&b[116..124])?,
        size: parse_numeric(&b[124..136])?,
        mtime: i64::try_from(mtime).map_err(|_| "mtime out of range")?,
        flag: TypeFlag::from_byte(b[156]),
        devmajor: dev(329..337)?,
        devminor: dev(337..345)?,
    })
}

/// Bytes of zero padding after `size` bytes of data.
pub fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// GNU sparse 1.0 as announced in PAX records; the map itself is in the data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SparseInfo {
    pub name: Option<Vec<u8>>,
    pub realsize: Option<u64>,
}

/// The PAX records that matter for extraction, accumulated over 'g' and 'x' headers.
#[derive(Clone, Debug, Default)]
pub struct Pax {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<(i64, u32)>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub sparse_major: Option<u64>,
    pub sparse_minor: Option<u64>,
    pub sparse: SparseInfo,
    /// GNU sparse 0.0/0.1 keys, which this library does not implement.
    pub old_sparse: bool,
}

fn dec(v: &[u8]) -> Result<u64, &'static str> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return Err("bad decimal number in a PAX record");
    }
    let mut n: u64 = 0;
    for &c in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(c - b'0')))
            .ok_or("number in a PAX record overflows")?;
    }
    Ok(n)
}

/// `[-]seconds[.fraction]`; fractions beyond nanoseconds are truncated.
pub fn parse_pax_time(v: &[u8]) -> Result<(i64, u32), &'static str> {
    let (neg, v) = match v.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, v),
    };
    let (int, frac) = match v.iter().position(|&c| c == b'.') {
        Some(p) => (&v[..p], &v[p + 1..]),
        None => (v, &b""[..]),
    };
    let secs = i64::try_from(dec(int)?).map_err(|_| "PAX time out of range")?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err("bad fraction in a PAX time");
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |c| u32::from(c - b'0'));
    }
    if !neg {
        return Ok((secs, nanos));
    }
    // -1.25 is 1.25 s before the epoch: seconds -2, nanos 0.75 s.
    if nanos == 0 {
        Ok((-secs, 0))
    } else {
        Ok((-secs - 1, 1_000_000_000 - nanos))
    }
}

/// Applies the records of one PAX extended header to `pax`.
pub fn parse_pax(data: &[u8], pax: &mut Pax) -> Result<(), &'static str> {
    let mut rest = data;
    while !rest.is_empty() {
        // Some writers pad the data with NULs after the last record.
        if rest.iter().all(|&c| c == 0) {
            break;
        }
        let sp = rest
            .iter()
            .take(21)
            .position(|&c| c == b' ')
            .ok_or("PAX record without a length")?;
        let len = usize::try_from(dec(&rest[..sp])?).map_err(|_| "PAX record length")?;
        if len <= sp + 1 || len > rest.len() {
            return Err("PAX record length out of bounds");
        }
        let rec = &rest[sp + 1..len];
        rest = &rest[len..];
        let rec = rec
            .strip_suffix(b"\n")
            .ok_or("PAX record not ended by a newline")?;
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or("PAX record without '='")?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let opt = |v: &[u8]| (!v.is_empty()).then(|| v.to_vec());
        match key {
            b"path" => pax.path = opt(value),
            b"linkpath" => pax.linkpath = opt(value),
            b"size" => {
                pax.size = if value.is_empty() {
                    None
                } else {
                    Some(dec(value)?)
                }
            }
            b"uid" => {
                pax.uid = if value.is_empty() {
                    None
                } else {
                    Some(dec(value)?)
                }
            }
            b"gid" => {
                pax.gid = if value.is_empty() {
                    None
                } else {
                    Some(dec(value)?)
                }
            }
            b"mtime" => {
                pax.mtime = if value.is_empty() {
                    None
                } else {
                    Some(parse_pax_time(value)?)
                }
            }
            b"GNU.sparse.major" => pax.sparse_major = Some(dec(value)?),
            b"GNU.sparse.minor" => pax.sparse_minor = Some(dec(value)?),
            b"GNU.sparse.name" => pax.sparse.name = opt(value),
            b"GNU.sparse.realsize" => pax.sparse.realsize = Some(dec(value)?),
            b"GNU.sparse.size" => pax.sparse.realsize = Some(dec(value)?),
            b"GNU.sparse.numblocks"
            | b"GNU.sparse.offset"
            | b"GNU.sparse.numbytes"
            | b"GNU.sparse.map" => pax.old_sparse = true,
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() {
                        return Err("empty xattr name");
                    }
                    pax.xattrs.retain(|(k, _)| k != name);
                    if pax.xattrs.len() >= MAX_XATTRS {
                        return Err("too many xattrs on one entry");
                    }
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_numeric(b"0000644\0"), Ok(0o644));
        assert_eq!(parse_numeric(b"  644 \0"), Ok(0o644));
        assert_eq!(parse_numeric(b"\0\0\0"), Ok(0));
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Ok(256));
        assert!(parse_numeric(&[0xff, 0xff]).is_err());
        assert!(parse_numeric(b"12a").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Ok((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"1.123456789123"), Ok((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Ok((-2, 750_000_000)));
        assert!(parse_pax_time(b"1.x").is_err());
    }

    #[test]
    fn pax_records() {
        let mut p = Pax::default();
        let data = b"16 path=a/b/c/d\n27 SCHILY.xattr.user.k=v\0w\n";
        parse_pax(data, &mut p).expect("valid records");
        assert_eq!(p.path.as_deref(), Some(&b"a/b/c/d"[..]));
        assert_eq!(p.xattrs, vec![(b"user.k".to_vec(), b"v\0w".to_vec())]);
        assert!(parse_pax(b"99 path=x\n", &mut p).is_err());
        assert!(parse_pax(b"9 path=x\0", &mut p).is_err());
        assert!(parse_pax(b"path=x\n", &mut p).is_err());
    }
}
