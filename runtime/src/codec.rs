//! Encoding of values and messages: bincode 2 over serde, one configuration for everything.
//!
//! Owns the byte format of task arguments, results and protocol messages.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `v`.
pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(v, config()).map_err(|e| e.to_string())
}

/// Encodes `v` at the end of `buf`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(v: &T, buf: &mut Vec<u8>) -> Result<(), String> {
    bincode::serde::encode_into_std_write(v, buf, config())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Decodes a `T` that must fill `bytes` exactly.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (v, used) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!("{} trailing bytes", bytes.len() - used));
    }
    Ok(v)
}

/// Encodes a user value, as a typed error.
pub(crate) fn encode_value<T: Serialize + ?Sized>(v: &T) -> crate::Result<Vec<u8>> {
    encode(v).map_err(|message| Error::Codec {
        op: "encode".into(),
        type_name: std::any::type_name::<T>().into(),
        message,
    })
}

/// Decodes a user value, as a typed error.
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> crate::Result<T> {
    decode(bytes).map_err(|message| Error::Codec {
        op: "decode".into(),
        type_name: std::any::type_name::<T>().into(),
        message,
    })
}
