using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.Security;

/// <summary>
/// The dashboard's sign-in session (<c>Dashboard__Session__IdleMinutes</c>, <c>Dashboard__Session__MaxLifetime</c>,
/// <c>Dashboard__Session__MaxSessionsPerKey</c>, <c>Dashboard__Session__SecureCookies</c>, <c>Dashboard__Session__KeysDirectory</c>).
/// </summary>
public sealed class DashboardSessionOptions : IValidatableObject
{
    public const string SectionName = "Dashboard:Session";

    /// <summary>A session ends after this long without a request; each request renews it (sliding).</summary>
    [Range(1, 24 * 60)]
    public int IdleMinutes { get; set; } = 30;

    /// <summary>A session ends this long after its sign-in, however active it is (<c>12:00:00</c>).</summary>
    [Range(typeof(TimeSpan), "00:00:01", "7.00:00:00")]
    public TimeSpan MaxLifetime { get; set; } = TimeSpan.FromHours(12);

    /// <summary>
    /// Live sessions one key may have; a sign-in beyond it ends that key's oldest, so signing in again and
    /// again (which no throttle slows down with a valid key) cannot grow <c>dashboard_sessions</c> without bound.
    /// </summary>
    [Range(1, 100_000)]
    public int MaxSessionsPerKey { get; set; } = 100;

    /// <summary>
    /// Takes every request as HTTPS, so the session and anti-forgery cookies are Secure <c>__Host-</c> cookies
    /// whatever the scheme the Api sees (<see cref="HostPrefixedCookies"/>). Needed behind a TLS-terminating
    /// proxy, where the Api sees plain HTTP and would otherwise issue them under their plain names, unprotected.
    /// Off: they are so only on requests that reach the Api over HTTPS.
    /// </summary>
    public bool SecureCookies { get; set; }

    /// <summary>
    /// A directory to keep the data-protection key ring in (it encrypts session cookies and
    /// anti-forgery tokens), shared by every replica. Unset: the ring is kept in the database's
    /// <c>data_protection_keys</c> table, which every replica shares already.
    /// </summary>
    public string? KeysDirectory { get; set; }

    /// <summary>
    /// Refuses a <see cref="KeysDirectory"/> the Api cannot keep keys in. Data protection creates the ring on first
    /// use, so such a directory (a path on a read-only root filesystem, a file, a blank value taken as a directory of
    /// that name) let the Api start, and only a sign-in, which needs the ring, failed.
    /// </summary>
    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (KeysDirectory is null || KeysDirectory.Length == 0)
        {
            yield break;
        }

        var setting = $"{SectionName}:{nameof(KeysDirectory)}";
        if (string.IsNullOrWhiteSpace(KeysDirectory))
        {
            yield return new ValidationResult($"{setting} is blank: leave it unset to keep the key ring in the database.", [nameof(KeysDirectory)]);
            yield break;
        }

        if (Unwritable(KeysDirectory) is { } reason)
        {
            yield return new ValidationResult(
                $"{setting} cannot be written ({reason}): the data-protection key ring that signs dashboard sessions is kept there.",
                [nameof(KeysDirectory)]);
        }
    }

    /// <summary>Why no key file could be written in <paramref name="directory"/> (created if missing, as data protection would), or null.</summary>
    private static string? Unwritable(string directory)
    {
        try
        {
            var probe = Path.Combine(Directory.CreateDirectory(directory).FullName, $".conveyor-write-check-{Guid.NewGuid():N}");
            File.WriteAllBytes(probe, []);
            File.Delete(probe);
            return null;
        }
        catch (Exception failure) when (failure is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            return failure.GetType().Name + ": " + failure.Message;
        }
    }
}
