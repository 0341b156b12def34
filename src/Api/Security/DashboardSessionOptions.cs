using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.Security;

/// <summary>The dashboard's sign-in session (<c>Dashboard__Session__IdleMinutes</c>, <c>Dashboard__Session__KeysDirectory</c>).</summary>
public sealed class DashboardSessionOptions
{
    public const string SectionName = "Dashboard:Session";

    /// <summary>A session ends after this long without a request; each request renews it (sliding).</summary>
    [Range(1, 24 * 60)]
    public int IdleMinutes { get; set; } = 30;

    /// <summary>
    /// Where the data-protection key ring that encrypts session cookies is kept. Unset: in the
    /// process's default location, which is fine for one replica; several replicas need a shared volume.
    /// </summary>
    public string? KeysDirectory { get; set; }
}
