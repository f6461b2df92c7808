//! Finite-difference checks of backward passes, in f64.

/// Checks `analytic[i]` (the gradient of `loss` with respect to `inputs[i]`) against central
/// differences, along a random direction and entry by entry. Relative error at most `1e-6`.
///
/// The differences use the fourth-order stencil `(8(f(x+h) − f(x−h)) − (f(x+2h) − f(x−2h))) / 12h`:
/// its truncation error is O(h⁴), so a step of 1e-4 keeps both truncation and rounding far below
/// the tolerance.
pub fn check_gradients(
    inputs: &[Vec<f64>],
    analytic: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
) {
    const EPS: f64 = 1e-4;
    const TOL: f64 = 1e-6;
    assert_eq!(inputs.len(), analytic.len());
    let mut rng = super::test_rng(99);

    // Along one random direction over all inputs at once.
    let direction: Vec<Vec<f64>> = inputs
        .iter()
        .map(|x| x.iter().map(|_| rng.normal()).collect())
        .collect();
    let shifted = |sign: f64| -> Vec<Vec<f64>> {
        inputs
            .iter()
            .zip(&direction)
            .map(|(x, d)| x.iter().zip(d).map(|(a, b)| a + sign * EPS * b).collect())
            .collect()
    };
    let numeric = (8.0 * (loss(&shifted(1.0)) - loss(&shifted(-1.0)))
        - (loss(&shifted(2.0)) - loss(&shifted(-2.0))))
        / (12.0 * EPS);
    let exact: f64 = analytic
        .iter()
        .zip(&direction)
        .flat_map(|(g, d)| g.iter().zip(d).map(|(a, b)| a * b))
        .sum();
    let rel = (numeric - exact).abs() / numeric.abs().max(exact.abs()).max(1e-8);
    assert!(
        rel <= TOL,
        "directional derivative: numeric {numeric}, analytic {exact}, rel {rel:e}"
    );

    // Entry by entry.
    for (i, (x, grad)) in inputs.iter().zip(analytic).enumerate() {
        assert_eq!(x.len(), grad.len(), "input {i}: gradient length");
        let scale = grad.iter().fold(0.0f64, |m, g| m.max(g.abs())).max(1e-8);
        for j in 0..x.len() {
            let at = |steps: f64| {
                let mut moved = inputs.to_vec();
                moved[i][j] += steps * EPS;
                loss(&moved)
            };
            let numeric = (8.0 * (at(1.0) - at(-1.0)) - (at(2.0) - at(-2.0))) / (12.0 * EPS);
            let denominator = numeric.abs().max(grad[j].abs()).max(1e-3 * scale);
            let rel = (numeric - grad[j]).abs() / denominator;
            assert!(
                rel <= TOL,
                "input {i}, entry {j}: numeric {numeric}, analytic {}, rel {rel:e}",
                grad[j]
            );
        }
    }
}
