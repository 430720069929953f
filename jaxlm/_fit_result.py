"""`fit`: `curve_fit` with the statistics and the report that lmfit users expect.

The statistics follow lmfit's definitions (https://lmfit.github.io/lmfit-py/fitting.html):
χ² = Σ r̂ᵢ² of the whitened residuals, reduced χ² = χ²/(m − k) for m points and k varied
parameters, AIC = m·ln(χ²/m) + 2k, BIC = m·ln(χ²/m) + ln(m)·k; R² = 1 − χ²/χ²₀ with χ²₀ that of
the (weighted) mean of the data. Bands at new x follow the delta method: the model's gradient
g = ∂f(x, p)/∂p at the solution gives Var f(x) ≈ g·pcov·gᵀ; a confidence band is
t·√(g·pcov·gᵀ), a prediction band adds the variance of one new measurement, with t the
Student-t quantile for m − k degrees of freedom.

With `estimator="poisson"` (counts), χ² is the Poisson deviance D = 2Σ (fᵢ − zᵢ − zᵢ ln(fᵢ/zᵢ))
(Gpufit's χ²_MLE), AIC = 2k − 2 ln L and BIC = ln(m)·k − 2 ln L from the likelihood
ln L = Σ (zᵢ ln fᵢ − fᵢ − ln zᵢ!), R² is the fraction of the deviance of the mean explained,
and pcov is the inverse Fisher information (absolute: the Cramér–Rao bound).
"""

import html
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._curve_fit import curve_fit, parameter_names_from_signature, unpack
from ._failure import reporting_off
from ._solution import Solution, Status


class FitResult(eqx.Module):
    """The result of `jaxlm.fit`: a pytree (it can leave `jit` and `vmap`; a batch of fits has a
    leading axis on every array, and `result[i]` is the i-th fit).

    Attributes:
        names: the parameter names, from `f`'s signature.
        params, stderr: the values and standard errors (NaN for pinned or fixed parameters).
        covariance, correlation: pcov and pcov normalised by the standard errors.
        initial: the starting values.
        chi_square, reduced_chi_square, aic, bic, r_squared: the fit statistics.
        estimator: "least_squares", or "poisson" (then chi_square is the deviance, and
            log_likelihood is ln L; it is NaN for least squares).
        num_points, num_varied, degrees_of_freedom: m, k and m − k.
        residual: the whitened residuals.
        status, success: as in `Solution`; `solution` is the whole `jaxlm.Solution`.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    model: Callable = eqx.field(static=True)
    absolute_sigma: bool = eqx.field(static=True)
    weighted: bool = eqx.field(static=True)  # whether the fit had sigma
    estimator: str = eqx.field(static=True)
    params: Float[Array, " n"]
    stderr: Float[Array, " n"]
    covariance: Float[Array, "n n"]
    correlation: Float[Array, "n n"]
    initial: Float[Array, " n"]
    chi_square: Float[Array, ""]
    reduced_chi_square: Float[Array, ""]
    aic: Float[Array, ""]
    bic: Float[Array, ""]
    r_squared: Float[Array, ""]
    log_likelihood: Float[Array, ""]
    num_points: Int[Array, ""]
    num_varied: Int[Array, ""]
    degrees_of_freedom: Int[Array, ""]
    residual: Float[Array, " m"]
    status: Int[Array, ""]
    success: Bool[Array, ""]
    covariance_singular: Bool[Array, ""]
    solution: Solution

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return self.status.shape

    def __getitem__(self, index) -> "FitResult":
        if not self.batch_shape:
            raise TypeError("this FitResult is a single fit; index a batch of fits instead.")
        return jax.tree.map(lambda leaf: leaf[index], self)

    def eval(self, x) -> Array:
        """The fitted model at x."""
        return self.model(x, *unpack(self.params))

    def confidence_band(self, x, level: float = 0.95) -> Array:
        """Half-width of the `level` confidence band of the fitted curve at x (delta method)."""
        return self._quantile(level) * jnp.sqrt(self._model_variance(x))

    def prediction_band(self, x, level: float = 0.95, sigma: ArrayLike | None = None) -> Array:
        """Half-width of the `level` band for a new measurement at x: the curve's variance plus
        that of the measurement. Without sigma in the fit that is the residual variance (the
        reduced χ²); with sigma, pass the standard deviation of the new measurement, which is
        scaled by the reduced χ² unless the fit used absolute_sigma."""
        if self.weighted and sigma is None:
            raise ValueError(
                "the fit used sigma: pass sigma=, the standard deviation of a new measurement at x."
            )
        noise = jnp.ones(()) if sigma is None else jnp.asarray(sigma) ** 2
        if not self.absolute_sigma:
            noise = noise * self.reduced_chi_square
        return self._quantile(level) * jnp.sqrt(self._model_variance(x) + noise)

    def _model_variance(self, x):
        self._require_single("bands")
        gradient = jax.jacfwd(lambda p: jnp.ravel(self.model(x, *unpack(p))))(self.params)
        covariance = jnp.where(jnp.isnan(self.covariance), 0, self.covariance)
        variance = jnp.einsum("kn,nm,km->k", gradient, covariance, gradient)
        return variance.reshape(jnp.shape(self.eval(x)))

    def _quantile(self, level):
        if not 0 < level < 1:
            raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}.")
        return student_t_quantile((1 + level) / 2, self.degrees_of_freedom, self.params.dtype)

    def _require_single(self, what):
        if self.batch_shape:
            raise ValueError(f"{what} are for one fit; take one from the batch first: result[i].")

    def report(self, correlation_threshold: float = 0.1) -> str:
        """A text report in the manner of lmfit's `fit_report`."""
        self._require_single("reports")
        status = Status(int(self.status))
        chi_square_name = "deviance" if self.estimator == "poisson" else "chi-square"
        lines = [
            "[[Fit Statistics]]",
            f"    # status           = {status.name} ({'success' if bool(self.success) else 'FAILED'})",
            f"    # function evals   = {int(self.solution.num_fev)}",
            f"    # data points      = {int(self.num_points)}",
            f"    # variables        = {int(self.num_varied)}",
            f"    # estimator        = {self.estimator}",
            f"    {chi_square_name:<19}= {float(self.chi_square):.8g}",
            f"    reduced chi-square = {float(self.reduced_chi_square):.8g}",
            f"    Akaike info crit   = {float(self.aic):.8g}",
            f"    Bayesian info crit = {float(self.bic):.8g}",
            f"    R-squared          = {float(self.r_squared):.8g}",
        ]
        if self.estimator == "poisson":
            lines.insert(-3, f"    log-likelihood     = {float(self.log_likelihood):.8g}")
        if not bool(self.success):
            lines.append(f"    ## {status.message}")
        if bool(self.covariance_singular):
            lines.append(
                "    ## Warning: the covariance could not be estimated (singular Jacobian or too few points)"
            )
        lines.append("[[Variables]]")
        width = max(len(name) for name in self.names) + 1
        for i, name in enumerate(self.names):
            value, error, start = float(self.params[i]), float(self.stderr[i]), float(self.initial[i])
            if np.isnan(error):
                detail = "(fixed or at a bound)"
            elif np.isfinite(error):
                relative = f" ({abs(error / value):.2%})" if value != 0 else ""
                detail = f"+/- {error:.8g}{relative}"
            else:
                detail = "+/- inf"
            lines.append(f"    {name + ':':<{width}} {value:.8g} {detail} (init = {start:.8g})")
        pairs = [
            (float(self.correlation[i, j]), self.names[i], self.names[j])
            for i in range(len(self.names))
            for j in range(i + 1, len(self.names))
            if np.isfinite(float(self.correlation[i, j]))
            and abs(float(self.correlation[i, j])) >= correlation_threshold
        ]
        if pairs:
            lines.append(f"[[Correlations]] (unreported correlations are < {correlation_threshold:.3f})")
            for value, first, second in sorted(pairs, key=lambda pair: -abs(pair[0])):
                lines.append(f"    C({first}, {second}) = {value:+.4f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        if self.batch_shape:
            successes = int(np.sum(np.asarray(self.success)))
            size = int(np.prod(self.batch_shape))
            return f"FitResult(batch of {size} fits, {successes} succeeded; result[i].report())"
        return self.report()

    def _repr_html_(self) -> str:
        """The report as HTML tables, for notebooks."""
        if self.batch_shape:
            return f"<pre>{html.escape(str(self))}</pre>"
        statistics = [
            ("status", Status(int(self.status)).name),
            ("data points", int(self.num_points)),
            ("variables", int(self.num_varied)),
            ("chi-square", f"{float(self.chi_square):.6g}"),
            ("reduced chi-square", f"{float(self.reduced_chi_square):.6g}"),
            ("AIC", f"{float(self.aic):.6g}"),
            ("BIC", f"{float(self.bic):.6g}"),
            ("R-squared", f"{float(self.r_squared):.6g}"),
        ]
        rows = "".join(
            f"<tr><td>{name}</td><td>{html.escape(str(value))}</td></tr>" for name, value in statistics
        )
        parameters = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{float(self.params[i]):.6g}</td>"
            f"<td>{float(self.stderr[i]):.3g}</td><td>{float(self.initial[i]):.6g}</td></tr>"
            for i, name in enumerate(self.names)
        )
        return (
            "<h4>Fit statistics</h4><table>" + rows + "</table>"
            "<h4>Parameters</h4><table><tr><th>name</th><th>value</th><th>standard error</th>"
            "<th>initial</th></tr>" + parameters + "</table>"
        )


def fit(
    f: Callable[..., ArrayLike], xdata, ydata: ArrayLike, p0: ArrayLike | None = None, **options
) -> FitResult:
    """Fit `f(xdata, *params)` to `ydata` like `jaxlm.curve_fit` (same arguments), and return a
    `FitResult` with standard errors, correlations, χ², AIC, BIC, R², bands and a report.

    Example:
        >>> import jax.numpy as jnp, jaxlm
        >>> def decay(x, amplitude, rate, offset):
        ...     return amplitude * jnp.exp(-rate * x) + offset
        >>> x = jnp.linspace(0.0, 4.0, 40)
        >>> y = decay(x, 2.5, 1.3, 0.2) + 0.05 * jnp.sin(17 * x)  # deterministic "noise"
        >>> result = jaxlm.fit(decay, x, y, p0=[1.0, 1.0, 0.0], sigma=0.05 * jnp.ones_like(y))
        >>> bool(result.success), [round(float(p), 1) for p in result.params]
        (True, [2.5, 1.3, 0.2])
        >>> print(result.report())  # doctest: +ELLIPSIS
        [[Fit Statistics]]
        ...
        >>> result.confidence_band(jnp.linspace(0.0, 5.0, 11)).shape  # half-width, 95%
        (11,)
    """
    if options.get("full_output"):
        raise ValueError("fit always collects curve_fit's full output; do not pass full_output.")
    with reporting_off():  # a failed fit is reported in the result's status
        popt, pcov, info, _, _ = curve_fit(f, xdata, ydata, p0, full_output=True, **options)
    num_params = popt.shape[-1]
    initial = jnp.broadcast_to(
        jnp.ones(num_params, popt.dtype) if p0 is None else jnp.asarray(p0, popt.dtype), popt.shape
    )
    stderr = jnp.sqrt(jnp.diagonal(pcov, axis1=-2, axis2=-1))
    chi_square = jnp.sum(info["fvec"] ** 2, axis=-1)
    num_points, num_varied = info["num_points"], info["num_varied"]
    degrees_of_freedom = num_points - num_varied
    estimator = options.get("estimator", "least_squares")
    if estimator == "poisson":
        log_likelihood = info["log_likelihood"]
        aic = 2 * num_varied - 2 * log_likelihood
        bic = jnp.log(num_points) * num_varied - 2 * log_likelihood
    else:
        log_likelihood_term = num_points * jnp.log(chi_square / num_points)
        log_likelihood = jnp.full_like(chi_square, jnp.nan)
        aic = log_likelihood_term + 2 * num_varied
        bic = log_likelihood_term + jnp.log(num_points) * num_varied
    return FitResult(
        names=parameter_names(f, num_params),
        model=f,
        absolute_sigma=bool(options.get("absolute_sigma", False)),
        weighted=options.get("sigma") is not None or options.get("weights") is not None,
        estimator=estimator,
        params=popt,
        stderr=stderr,
        covariance=pcov,
        correlation=pcov / (stderr[..., :, None] * stderr[..., None, :]),
        initial=initial,
        chi_square=chi_square,
        reduced_chi_square=chi_square / degrees_of_freedom,
        aic=aic,
        bic=bic,
        r_squared=info["r_squared"],
        log_likelihood=log_likelihood,
        num_points=num_points,
        num_varied=num_varied,
        degrees_of_freedom=degrees_of_freedom,
        residual=info["fvec"],
        status=info["status"],
        success=info["success"],
        covariance_singular=info["covariance_singular"],
        solution=info["solution"],
    )


def parameter_names(f, num_params: int) -> tuple[str, ...]:
    """The names of f's parameters after x, or p0, p1, ... when its signature does not say."""
    names = parameter_names_from_signature(f)
    if names is None or len(names) != num_params:
        names = [f"p{i}" for i in range(num_params)]
    return tuple(names)


def student_t_quantile(probability, degrees_of_freedom, dtype=jnp.float64) -> Array:
    """t with P(T ≤ t) = probability ≥ ½ for Student's t with ν degrees of freedom, by bisection
    on its CDF, 1 − ½·I_{ν/(ν+t²)}(ν/2, ½) (I the regularised incomplete beta function)."""
    nu = jnp.asarray(degrees_of_freedom, dtype)

    def cdf(t):
        return 1 - 0.5 * jax.scipy.special.betainc(nu / 2, jnp.asarray(0.5, dtype), nu / (nu + t**2))

    def bisect(_, bracket):
        low, high = bracket
        middle = 0.5 * (low + high)
        below = cdf(middle) < probability
        return jnp.where(below, middle, low), jnp.where(below, high, middle)

    low, high = lax.fori_loop(0, 200, bisect, (jnp.zeros((), dtype), jnp.asarray(1e6, dtype)))
    return jnp.where(nu > 0, 0.5 * (low + high), jnp.nan)
