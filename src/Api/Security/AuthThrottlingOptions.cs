using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.Security;

/// <summary>
/// Limits on failed authentication per client address (see <see cref="AuthThrottle"/> and ADR 0003): a
/// locked-out address has its unknown keys refused with 429; valid keys are always accepted.
/// Environment variables: <c>Auth__Throttling__Enabled</c>, <c>Auth__Throttling__MaxEntries</c>, and for
/// each of <c>SignIn</c> (the dashboard's sign-in form) and <c>ApiKeys</c> (a key header):
/// <c>Auth__Throttling__SignIn__MaxFailures</c>, <c>__Window</c>, <c>__Lockout</c>, <c>__MaxLockout</c>.
/// </summary>
public sealed class AuthThrottlingOptions : IValidatableObject
{
    public const string SectionName = "Auth:Throttling";

    public bool Enabled { get; set; } = true;

    /// <summary>
    /// Addresses remembered per kind (sign-in, API keys); beyond it the entries closest to expiring are
    /// dropped, so an attacker rotating addresses cannot grow the table.
    /// </summary>
    [Range(16, 1_000_000)]
    public int MaxEntries { get; set; } = 10_000;

    /// <summary>
    /// The sign-in form: 10 unknown keys from one address within 15 minutes lock it out for 1 minute, then
    /// 2, 4, ... up to 15 for each further lockout that follows within 15 minutes of the last.
    /// </summary>
    public AuthThrottleLimits SignIn { get; set; } = new()
    {
        MaxFailures = 10,
        Window = TimeSpan.FromMinutes(15),
        Lockout = TimeSpan.FromMinutes(1),
        MaxLockout = TimeSpan.FromMinutes(15),
    };

    /// <summary>
    /// Key headers: 20 unknown keys from one address within 5 minutes lock it out for 30 seconds, then
    /// 1 minute, 2, ... up to 15.
    /// </summary>
    public AuthThrottleLimits ApiKeys { get; set; } = new()
    {
        MaxFailures = 20,
        Window = TimeSpan.FromMinutes(5),
        Lockout = TimeSpan.FromSeconds(30),
        MaxLockout = TimeSpan.FromMinutes(15),
    };

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        foreach (var (name, limits) in new[] { (nameof(SignIn), SignIn), (nameof(ApiKeys), ApiKeys) })
        {
            var results = new List<ValidationResult>();
            Validator.TryValidateObject(limits, new ValidationContext(limits), results, validateAllProperties: true);
            foreach (var result in results)
            {
                yield return new ValidationResult($"{SectionName}:{name}: {result.ErrorMessage}", [.. result.MemberNames.Select(member => $"{name}.{member}")]);
            }

            if (limits.MaxLockout < limits.Lockout)
            {
                yield return new ValidationResult($"{SectionName}:{name}: MaxLockout must not be shorter than Lockout.", [$"{name}.{nameof(limits.MaxLockout)}"]);
            }
        }
    }
}

/// <summary>When failures from one address lock it out, and for how long.</summary>
public sealed class AuthThrottleLimits
{
    /// <summary>Unknown keys within <see cref="Window"/> that start a lockout.</summary>
    [Range(1, 1_000_000)]
    public int MaxFailures { get; set; }

    /// <summary>
    /// Failures are counted from the first one for this long. It is also how long a lockout is
    /// remembered after it ends: a further lockout within it lasts twice as long as the last.
    /// </summary>
    [Range(typeof(TimeSpan), "00:00:01", "1.00:00:00")]
    public TimeSpan Window { get; set; }

    /// <summary>The first lockout's length.</summary>
    [Range(typeof(TimeSpan), "00:00:01", "1.00:00:00")]
    public TimeSpan Lockout { get; set; }

    /// <summary>The longest a lockout gets by doubling.</summary>
    [Range(typeof(TimeSpan), "00:00:01", "1.00:00:00")]
    public TimeSpan MaxLockout { get; set; }
}
