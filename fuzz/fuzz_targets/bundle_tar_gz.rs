#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    policy_bundles::fuzzing::bundle_tar_gz(data);
});
