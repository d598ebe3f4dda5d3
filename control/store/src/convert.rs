//! Conversions between domain values and column values. Times and sequence numbers are `u64`
//! in the domain and signed 64-bit integers in both databases.

use crate::error::StoreError;

/// A `u64` as a column value; values past `i64::MAX` (only "never expires" in practice) are
/// stored as `i64::MAX`.
pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A column value as a `u64`; a negative value is corruption (the store never writes one).
pub(crate) fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::corrupt(format!("negative value {value}")))
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(bytes).map_err(|_| {
        StoreError::corrupt(format!(
            "a {}-byte value where {N} bytes belong",
            bytes.len()
        ))
    })
}

/// A 16-byte id column.
pub(crate) fn blob16(bytes: &[u8]) -> Result<[u8; 16], StoreError> {
    array(bytes)
}

/// A 32-byte key or hash column.
pub(crate) fn blob32(bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    array(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_or_refuse() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_i64(5), 5);
        assert!(to_u64(-1).is_err());
        assert!(blob16(&[0; 15]).is_err());
        assert_eq!(blob32(&[3; 32]).unwrap(), [3; 32]);
    }
}
