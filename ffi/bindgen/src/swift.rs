//! `uniffi-bindgen-swift`: Swift sources, C headers and a module map for an XCFramework.

fn main() {
    uniffi::uniffi_bindgen_swift();
}
