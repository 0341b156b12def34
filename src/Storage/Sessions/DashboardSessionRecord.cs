namespace Conveyor.Storage.Sessions;

/// <summary>
/// One signed-in dashboard session. Its cookie names the row; the session lasts while the row does
/// and until <see cref="ExpiresAt"/>, so signing out (deleting the row) ends it on every Api replica,
/// and no activity keeps it past its absolute lifetime.
/// </summary>
public sealed class DashboardSessionRecord
{
    public Guid Id { get; set; }

    /// <summary>The API key name that signed in.</summary>
    public required string KeyName { get; set; }

    /// <summary>Set by the database's clock.</summary>
    public DateTimeOffset StartedAt { get; set; }

    /// <summary>The end of the absolute lifetime, by the database's clock.</summary>
    public DateTimeOffset ExpiresAt { get; set; }
}
