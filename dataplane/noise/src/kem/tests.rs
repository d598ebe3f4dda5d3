//! Goal: the libcrux implementation agrees with RustCrypto's `ml-kem` on every output, so a
//! bug in either shows up as a mismatch. Method: derive keys, ciphertexts and secrets from the
//! same seeds with both and compare bytes.

use super::*;
use ml_kem::{Decapsulate, DecapsulationKey, EncapsulationKey, KeyExport, Seed};

type MlKem768Params = ml_kem::MlKem768;

fn seeds(i: u8) -> ([u8; 64], [u8; 32]) {
    let mut keygen = [0u8; 64];
    for (j, byte) in keygen.iter_mut().enumerate() {
        *byte = i.wrapping_mul(31).wrapping_add(j as u8);
    }
    (keygen, [i ^ 0x5a; 32])
}

#[test]
fn libcrux_agrees_with_rustcrypto() {
    for i in 0..8u8 {
        let (keygen, m) = seeds(i);
        let (dk, ek) = MlKem768::generate(&keygen);
        let (ct, ss) = MlKem768::encapsulate(&ek, &m).unwrap();
        assert_eq!(MlKem768::decapsulate(&dk, &ct), ss);

        let seed = Seed::try_from(&keygen[..]).unwrap();
        let rc_dk = DecapsulationKey::<MlKem768Params>::from_seed(seed);
        let rc_ek = rc_dk.encapsulation_key();
        assert_eq!(rc_ek.to_bytes().as_slice(), &ek[..], "public key, seed {i}");
        let rc_ek2 =
            EncapsulationKey::<MlKem768Params>::new(&ek.as_slice().try_into().unwrap()).unwrap();
        let (rc_ct, rc_ss) = rc_ek2.encapsulate_deterministic(&m.as_slice().try_into().unwrap());
        assert_eq!(rc_ct.as_slice(), &ct[..], "ciphertext, seed {i}");
        assert_eq!(rc_ss.as_slice(), &ss[..], "secret, seed {i}");
        assert_eq!(rc_dk.decapsulate(&rc_ct).as_slice(), &ss[..]);
    }
}

#[test]
fn forged_ciphertext_gives_an_unrelated_secret() {
    let (keygen, m) = seeds(1);
    let (dk, ek) = MlKem768::generate(&keygen);
    let (mut ct, ss) = MlKem768::encapsulate(&ek, &m).unwrap();
    ct[100] ^= 1;
    assert_ne!(MlKem768::decapsulate(&dk, &ct), ss);
}

#[test]
fn invalid_public_key_is_refused() {
    // Coefficients are 12-bit values below q = 3329; 0xfff everywhere fails the modulus check.
    let ek = [0xffu8; KEM_PUBLIC_KEY_LEN];
    assert!(MlKem768::encapsulate(&ek, &[0; 32]).is_none());
}
