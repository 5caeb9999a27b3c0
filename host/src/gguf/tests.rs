use super::writer::put_str;
use super::*;

fn sample() -> Vec<u8> {
    let mut w = Writer::new();
    w.kv("general.architecture", Value::Str("llama".into()));
    w.kv("general.alignment", Value::U32(32));
    w.kv("list", Value::Array(Array::Str(vec!["a".into(), "".into()])));
    w.kv("flags", Value::Array(Array::Bool(vec![true, false])));
    w.kv("pi", Value::F64(3.25));
    w.tensor_f32("a", &[3, 2], vec![1.0; 6]);
    w.tensor_f32("b", &[5], vec![2.0; 5]);
    let mut out = Vec::new();
    w.write(&mut out).unwrap();
    out
}

#[test]
fn what_the_writer_writes_reads_back() {
    let bytes = sample();
    let g = Gguf::read(&mut &bytes[..], bytes.len() as u64).unwrap();
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get("flags"), Some(&Value::Array(Array::Bool(vec![true, false]))));
    assert_eq!(g.get("pi"), Some(&Value::F64(3.25)));
    let b = g.tensor("b").unwrap();
    assert_eq!((b.dims.as_slice(), b.size), (&[5u64][..], 20));
    let data: Vec<f32> = bytes[b.offset as usize..][..20]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data, [2.0; 5]);
    assert_eq!(g.tensor("a").unwrap().offset, g.data_offset);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let bytes = sample();
    for n in 0..bytes.len() - 20 {
        let e = Gguf::read(&mut &bytes[..n], n as u64).unwrap_err();
        assert!(matches!(e, GgufError::Truncated(_) | GgufError::NotGguf), "{n}: {e}");
    }
}

#[test]
fn a_declared_size_beyond_the_reader_is_truncated_too() {
    let bytes = sample();
    let e = Gguf::read(&mut &bytes[..100], bytes.len() as u64).unwrap_err();
    assert!(matches!(e, GgufError::Truncated(_)), "{e}");
}

#[test]
fn huge_declared_arrays_are_refused_before_allocating() {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    put_str(&mut b, "k");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend((1u64 << 29).to_le_bytes());
    let e = Gguf::read(&mut &b[..], b.len() as u64).unwrap_err();
    assert!(matches!(e, GgufError::Truncated(_)), "{e}");
}

#[test]
fn gaps_between_tensors_are_malformed() {
    let mut bytes = sample();
    let g = Gguf::read(&mut &bytes[..], bytes.len() as u64).unwrap();
    // The second tensor's offset field: the last 8 bytes before the
    // padding that precedes the data.
    let pos = (0..bytes.len() - 8).rev().find(|&i| bytes[i..i + 8] == 32u64.to_le_bytes()).unwrap();
    assert!(pos < g.data_offset as usize);
    bytes[pos..pos + 8].copy_from_slice(&64u64.to_le_bytes());
    let e = Gguf::read(&mut &bytes[..], bytes.len() as u64).unwrap_err();
    assert!(matches!(e, GgufError::Malformed(_)), "{e}");
}
