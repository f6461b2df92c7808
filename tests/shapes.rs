//! Compile-time shapes: a buffer of one preset given to a model of another does not compile.

#[test]
fn buffers_of_one_preset_do_not_fit_another() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}
