using System.Globalization;
using Conveyor.Api.Hosting;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Transactions of a request that lock a job's row and its stored commands (a cancel, a run-now). Workers hold a job's
/// row for as long as an attempt runs (the claim is in their inbox transaction), and the dispatcher holds a stored
/// command while it publishes it, so such a transaction waits for either lock at most <see cref="LockWaitMilliseconds"/>
/// and is then reported as busy, instead of holding the request and a connection until the statement timeout (which the
/// Api answered as an unreachable database).
/// The transaction holds those rows, so it runs on a session of its own that ends with it: its statements get no token
/// for Npgsql and are waited for at most <see cref="AnswerTimeout"/> (then a 503), and a transaction that stops early (the
/// request aborted, the server not answering) closes the session, which rolls the transaction back on the server, instead
/// of waiting for the server to answer a cancel request or a rollback (<see cref="HeldSessions"/>). The server ends the
/// session itself when the Api falls silent inside the transaction for as long (a close that does not reach it, a process
/// that vanished).
/// </summary>
internal sealed class JobRowTransactions(IConfiguration configuration) : IDisposable
{
    /// <summary>
    /// How long a statement waits for a row another transaction holds: a dispatch's confirm or a group commit ends well
    /// within it; an attempt that runs longer has most likely started the job.
    /// </summary>
    public const int LockWaitMilliseconds = 5000;

    /// <summary>
    /// How long a statement may go unanswered, one that waits its whole <see cref="LockWaitMilliseconds"/> included, and
    /// how long the server lets the transaction wait for the Api's next statement.
    /// </summary>
    internal static readonly TimeSpan AnswerTimeout = TimeSpan.FromMilliseconds(LockWaitMilliseconds) + TimeSpan.FromSeconds(5);

    /// <summary>
    /// These transactions' sessions open at once in this Api, at most <see cref="ApiApp.MaxRowLockSessions"/>. They are
    /// outside the pool, which <c>Maximum Pool Size</c> bounds: a burst of cancels of jobs a worker holds, each waiting
    /// up to <see cref="LockWaitMilliseconds"/> on a session of its own, opened one per request until PostgreSQL's
    /// <c>max_connections</c> refused every client, the workers included. A request waits for one at most
    /// <see cref="LockWaitMilliseconds"/>, and is then answered 503 with <c>Retry-After</c>, nothing done.
    /// </summary>
    private readonly SemaphoreSlim _sessions = new(ApiApp.MaxRowLockSessions, ApiApp.MaxRowLockSessions);

    /// <summary>The contexts' connection string, unpooled: closing the connection ends the session (and its transaction).</summary>
    private readonly string _connectionString = new NpgsqlConnectionStringBuilder(
        StorageServiceCollectionExtensions.ForContexts(StorageServiceCollectionExtensions.ConnectionString(configuration)))
    {
        Pooling = false,
    }.ConnectionString;

    public void Dispose() => _sessions.Dispose();

    /// <summary>
    /// Runs <paramref name="work"/> in a transaction on a session of its own and commits it. Null when a lock wait ran
    /// out: the transaction rolled back, nothing changed.
    /// </summary>
    /// <param name="what">What the transaction does, for the error when the server does not answer ("a job's cancel").</param>
    public async Task<T?> RunAsync<T>(string what, Func<Statements, Task<T>> work, CancellationToken cancellationToken)
        where T : class
    {
        if (!await _sessions.WaitAsync(LockWaitMilliseconds, cancellationToken))
        {
            throw new ApiBusyException(
                $"This Api had {ApiApp.MaxRowLockSessions} cancels and run-nows waiting on jobs that workers or the scheduler hold for {LockWaitMilliseconds} ms; {what} was not tried. Retry later.");
        }

        try
        {
            return await RunOnSessionAsync(what, work, cancellationToken);
        }
        finally
        {
            _sessions.Release();
        }
    }

    private async Task<T?> RunOnSessionAsync<T>(string what, Func<Statements, Task<T>> work, CancellationToken cancellationToken)
        where T : class
    {
        var connection = new NpgsqlConnection(_connectionString);
        var db = new ConveyorDbContext(StorageServiceCollectionExtensions.On(connection));
        try
        {
            await connection.OpenAsync(cancellationToken);
            var statements = new Statements(db, what, cancellationToken);
            await db.Database.BeginTransactionAsync(cancellationToken);
            // The transaction's own settings (is_local), which end with it.
            var wait = ((long)AnswerTimeout.TotalMilliseconds).ToString(CultureInfo.InvariantCulture);
            await statements.Answered(db.Database.ExecuteSqlInterpolatedAsync(
                $"""
                SELECT set_config('lock_timeout', {LockWaitMilliseconds.ToString(CultureInfo.InvariantCulture)}, true),
                       set_config('idle_in_transaction_session_timeout', {wait}, true)
                """, CancellationToken.None));
            var result = await work(statements);
            await statements.Answered(db.Database.CommitTransactionAsync(CancellationToken.None));
            await connection.DisposeAsync();
            return result;
        }
        catch (Exception exception)
        {
            // Never a rollback, which would wait for the server: the transaction ends with the session.
            await HeldSessions.CloseAsync(connection);
            if (DatabaseFailures.IsLockNotAvailable(exception))
            {
                return null;
            }

            throw;
        }
        finally
        {
            // After the close: the context's transaction, if still open, is let go without a word to the server.
            await db.DisposeAsync();
        }
    }

    /// <summary>The transaction's context, and the wait for each of its statements.</summary>
    internal sealed class Statements(ConveyorDbContext db, string what, CancellationToken cancellationToken)
    {
        public ConveyorDbContext Db => db;

        /// <summary>A statement started without a token for Npgsql, waited for at most <see cref="AnswerTimeout"/>.</summary>
        public Task Answered(Task statement) => HeldSessions.WaitForRequestAsync(statement, AnswerTimeout, what, cancellationToken);

        /// <inheritdoc cref="Answered(Task)"/>
        public Task<T> Answered<T>(Task<T> statement) => HeldSessions.WaitForRequestAsync(statement, AnswerTimeout, what, cancellationToken);
    }
}
