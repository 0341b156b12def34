using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A logger provider that keeps every entry the host's filters let through, for tests that assert what
/// a host logged: <c>configure: builder => builder.Logging.AddProvider(logs)</c>.
/// </summary>
public sealed class CapturedLogs : ILoggerProvider
{
    private readonly ConcurrentQueue<Entry> _entries = new();

    public IReadOnlyList<Entry> Entries => [.. _entries];

    /// <summary>The entries of <paramref name="level"/> whose category is <paramref name="category"/>.</summary>
    public IReadOnlyList<Entry> Of(LogLevel level, string category) =>
        [.. _entries.Where(e => e.Level == level && e.Category == category)];

    public ILogger CreateLogger(string categoryName) => new Logger(categoryName, _entries);

    public void Dispose()
    {
    }

    public sealed record Entry(string Category, LogLevel Level, EventId EventId, string Message);

    private sealed class Logger(string category, ConcurrentQueue<Entry> entries) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            entries.Enqueue(new Entry(category, logLevel, eventId, formatter(state, exception)));
    }
}
