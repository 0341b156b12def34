using System.Data.Common;

namespace Conveyor.ServiceDefaults;

/// <summary>A failure's cause, short enough for a health answer or a log line, without secrets.</summary>
public static class HealthReasons
{
    public const int MaxLength = 300;

    /// <summary>
    /// The exception's type and message and, when it wraps another, the innermost one's (an
    /// <c>NpgsqlException</c> "Failed to connect to ..." over a <c>SocketException</c> "Connection
    /// refused"). Npgsql and RabbitMQ.Client name host, port, database and user, never the password;
    /// should a message quote <paramref name="connectionString"/>'s password all the same, it is masked.
    /// </summary>
    public static string Describe(Exception exception, string? connectionString = null)
    {
        var innermost = exception.GetBaseException();
        var text = innermost == exception
            ? $"{exception.GetType().Name}: {exception.Message}"
            : $"{exception.GetType().Name}: {exception.Message} ({innermost.GetType().Name}: {innermost.Message})";
        foreach (var secret in Secrets(connectionString))
        {
            text = text.Replace(secret, "***", StringComparison.Ordinal);
        }

        return Bounded(text.ReplaceLineEndings(" "));
    }

    /// <summary><paramref name="text"/> cut to <see cref="MaxLength"/>, an ellipsis marking the cut.</summary>
    public static string Bounded(string text) =>
        text.Length <= MaxLength ? text : string.Concat(text.AsSpan(0, MaxLength - 1), "…");

    private static IEnumerable<string> Secrets(string? connectionString)
    {
        if (string.IsNullOrEmpty(connectionString))
        {
            yield break;
        }

        var builder = new DbConnectionStringBuilder();
        try
        {
            builder.ConnectionString = connectionString;
        }
        catch (ArgumentException)
        {
            // Unparsable: mask the whole string wherever it appears.
            builder.Clear();
        }

        yield return connectionString;
        foreach (var key in new[] { "Password", "Pwd" })
        {
            if (builder.TryGetValue(key, out var value) && value is string { Length: > 0 } password)
            {
                yield return password;
            }
        }
    }
}
