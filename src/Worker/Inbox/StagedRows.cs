using System.Collections.Concurrent;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Metadata;
using Npgsql;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// Writes the inserts that a batch's consumers staged: one <c>INSERT … SELECT … FROM unnest(…)</c>
/// per entity type, with one array parameter per column, instead of SaveChanges' one INSERT per
/// row (each bound, planned and executed on its own), appended to the command that writes the batch's
/// job rows, so the batch's writes take one round trip. A type it cannot write that way (owned or
/// shadow properties, or a value the database or EF would have to generate) goes through
/// SaveChanges as before.
/// </summary>
public static class StagedRows
{
    private static readonly ConcurrentDictionary<IEntityType, Writer?> Writers = new();

    /// <summary>
    /// <paramref name="sql"/> followed by the inserts of <paramref name="entities"/>, one statement per entity
    /// type, their array parameters after <paramref name="sql"/>'s arguments. Entities of a type this cannot
    /// write are added to <paramref name="others"/> (for <see cref="SaveAsync"/>).
    /// </summary>
    public static FormattableString Append(
        ConveyorDbContext db, FormattableString sql, IReadOnlyCollection<object> entities, List<object> others)
    {
        var format = new StringBuilder(sql.Format);
        var arguments = new List<object?>(sql.GetArguments());
        foreach (var group in entities.GroupBy(e => e.GetType()))
        {
            var rows = group.ToList();
            var entityType = db.Model.FindEntityType(group.Key);
            var writer = entityType is null ? null : Writers.GetOrAdd(entityType, Writer.For);
            if (writer is null || !writer.CanWrite(rows))
            {
                others.AddRange(rows);
                continue;
            }

            format.Append(";\n").Append(writer.Format(arguments.Count));
            arguments.AddRange(writer.Parameters(rows, prefix: string.Create(CultureInfo.InvariantCulture, $"staged{arguments.Count}_")));
        }

        return FormattableStringFactory.Create(format.ToString(), [.. arguments]);
    }

    /// <summary>Entities <see cref="Append"/> could not write, inserted through SaveChanges.</summary>
    public static async Task SaveAsync(ConveyorDbContext db, IReadOnlyCollection<object> others, CancellationToken cancellationToken)
    {
        db.AddRange(others);
        await db.SaveChangesAsync(cancellationToken);
        db.ChangeTracker.Clear();
    }

    private sealed class Writer(string table, IReadOnlyList<Column> columns)
    {
        /// <summary>The statement as a composite format, its array parameters numbered from <paramref name="first"/>.</summary>
        public string Format(int first) =>
            new StringBuilder("INSERT INTO ").Append(table).Append(" (").AppendJoin(", ", columns.Select(c => Quote(c.Name)))
                .Append(") SELECT * FROM unnest(")
                .AppendJoin(", ", columns.Select((c, i) => string.Create(CultureInfo.InvariantCulture, $"{{{first + i}}}::{c.Property.GetColumnType()}[]")))
                .Append(')')
                .ToString();

        public static Writer? For(IEntityType entityType)
        {
            if (entityType.GetTableName() is not { } table
                || entityType.GetNavigations().Any()
                || entityType.GetComplexProperties().Any()
                || entityType.IsOwned()
                || entityType.GetDerivedTypes().Any()
                || entityType.GetProperties().Any(p => p.IsShadowProperty() || p.GetColumnType() is null))
            {
                return null;
            }

            var identifier = StoreObjectIdentifier.Table(table, entityType.GetSchema());
            var columns = entityType.GetProperties().Select(p => new Column(p, p.GetColumnName(identifier) ?? p.GetColumnName())).ToList();
            var qualified = entityType.GetSchema() is { } schema ? Quote(schema) + "." + Quote(table) : Quote(table);
            return new Writer(qualified, columns);
        }

        /// <summary>False when a row leaves a generated value unset (EF or the database would fill it in).</summary>
        public bool CanWrite(List<object> rows) =>
            columns.Where(c => c.Property.ValueGenerated != ValueGenerated.Never)
                .All(c => rows.All(row => !c.Property.GetGetter().HasSentinelValue(row)));

        public object[] Parameters(List<object> rows, string prefix)
        {
            var parameters = new object[columns.Count];
            for (var i = 0; i < columns.Count; i++)
            {
                var column = columns[i];
                var values = Array.CreateInstance(column.ProviderType, rows.Count);
                for (var r = 0; r < rows.Count; r++)
                {
                    values.SetValue(column.ToProvider(column.Property.GetGetter().GetClrValue(rows[r])), r);
                }

                parameters[i] = new NpgsqlParameter(string.Create(CultureInfo.InvariantCulture, $"{prefix}{i}"), values);
            }

            return parameters;
        }

        /// <summary>Quoted, and with its braces doubled: the name goes into a composite format.</summary>
        private static string Quote(string identifier) =>
            ("\"" + identifier.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"").Replace("{", "{{", StringComparison.Ordinal).Replace("}", "}}", StringComparison.Ordinal);
    }

    private sealed class Column(IProperty property, string name)
    {
        private readonly Microsoft.EntityFrameworkCore.Storage.ValueConversion.ValueConverter? _converter = property.GetTypeMapping().Converter;

        public IProperty Property { get; } = property;

        public string Name { get; } = name;

        /// <summary>The element type of the column's array parameter (nullable value types stay nullable).</summary>
        public Type ProviderType { get; } = property.GetTypeMapping().Converter is { } converter
            ? (property.IsNullable && converter.ProviderClrType.IsValueType && Nullable.GetUnderlyingType(converter.ProviderClrType) is null
                ? typeof(Nullable<>).MakeGenericType(converter.ProviderClrType)
                : converter.ProviderClrType)
            : property.ClrType;

        public object? ToProvider(object? value) => value is null || _converter is null ? value : _converter.ConvertToProvider(value);
    }
}
