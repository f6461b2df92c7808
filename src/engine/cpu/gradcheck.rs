//! Finite-difference checks of backward passes, in f64.

/// Checks `analytic[i]` (the gradient of `loss` with respect to `inputs[i]`) against central
/// differences, along a random direction and entry by entry. Relative error at most `1e-6`.
pub fn check_gradients(
    inputs: &[Vec<f64>],
    analytic: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
) {
    const EPS: f64 = 1e-6;
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
    let numeric = (loss(&shifted(1.0)) - loss(&shifted(-1.0))) / (2.0 * EPS);
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
            let mut plus = inputs.to_vec();
            plus[i][j] += EPS;
            let mut minus = inputs.to_vec();
            minus[i][j] -= EPS;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * EPS);
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
