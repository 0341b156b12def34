using System.Text.RegularExpressions;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// How a test starts a host as its own process on a loopback port the process picks itself, and learns which: the host
/// binds port 0 and logs the address it got. A port the test picked, released for the process to bind, could be taken
/// meanwhile (by another listener, or as an outgoing connection's local port, in this process or another); the process
/// then failed to start, or the test talked to whatever had taken the port.
/// </summary>
internal static partial class ListeningAddress
{
    /// <summary>The arguments that make a host listen on <paramref name="port"/>, or on a port of its own when null, and log it.</summary>
    public static IEnumerable<string> Arguments(int? port) =>
    [
        $"--urls=http://127.0.0.1:{port ?? 0}",
        // Settings that quiet the host's logs (Logging:LogLevel:Default=Warning) would hide the line read here.
        "--Logging:LogLevel:Microsoft.Hosting.Lifetime=Information",
    ];

    /// <summary>The address in a host's "Now listening on" line; null for any other line.</summary>
    public static Uri? In(string line) =>
        NowListeningOn().Match(line) is { Success: true } match ? new Uri(match.Groups["address"].Value) : null;

    // Plain or JSON console logs alike.
    [GeneratedRegex(@"Now listening on: (?<address>http://[^\s""]+)")]
    private static partial Regex NowListeningOn();
}
