//! File names come from other devices through the feed: whatever the name, the file a
//! device writes is one plain component inside its folder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let name = String::from_utf8_lossy(data);
    let safe = keepsake_device::safe_name(&name, "asset");
    assert!(!safe.is_empty());
    assert!(!safe.starts_with('.'), "{safe:?} is hidden or a parent");
    assert!(!safe.contains(['/', '\\']), "{safe:?} is a path");
    assert!(!safe.chars().any(char::is_control), "{safe:?}");
    let mut parts = std::path::Path::new(&safe).components();
    assert!(
        matches!(parts.next(), Some(std::path::Component::Normal(_))) && parts.next().is_none(),
        "{safe:?} is not one plain component"
    );
});
